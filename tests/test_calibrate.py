"""`cmc calibrate`: the rule on constructed curves, the measurement against the template's own (a user that is
the template must measure exactly what the template does at alpha 1), the record with its fingerprints, and
its use by generate / the Python API / serving."""

import json
import shutil

import pytest

from cmc_cli.config import TrainConfig
from cmc_cli.engine.calibrate import COST_FLOOR, GRID, choose
from cmc_cli.engine.train import Trainer


def test_the_rule_on_constructed_curves():
    grid = [0.5, 1.0, 1.5, 2.0, 2.5]
    hits = [0.30, 0.60, 0.80, 0.85, 0.86]  # the objective's greedy hits rise with alpha
    cost = {"general": [0.001, 0.004, 0.009, 0.016, 0.025]}  # greedy hits lost off-target
    # the smallest alpha reaching the target, within the budget
    assert choose(grid, hits, 0.8, "lower", cost, {"general": 0.02})[0] == 1.5
    # the budget forbids 2.5 and up; nothing allowed reaches 0.9: the allowed one closest to it
    a, why = choose(grid, hits, 0.9, "lower", cost, {"general": 0.02})
    assert a == 2.0 and "closest" in why
    # a tight budget caps the strength
    assert choose(grid, hits, 0.8, "lower", cost, {"general": 0.005})[0] == 1.0
    # a peak below the target, then a fall (a delta that overshoots): the peak; a plateau within TIE: its start
    assert choose(grid, [0.3, 0.88, 0.87, 0.84, 0.80], 0.97, "lower", cost, {"general": 1.0})[0] == 1.0
    assert choose(grid, [0.3, 0.8795, 0.88, 0.879, 0.80], 0.97, "lower", cost, {"general": 1.0})[0] == 1.0
    # the ascent methods take the argmax away from the forget answers: the direction flips
    assert choose(grid, [0.9, 0.6, 0.3, 0.1, 0.05], 0.2, "raise", cost, {"general": 1.0})[0] == 2.0
    # nothing allowed at all: the smallest
    assert choose(grid, hits, 0.8, "lower", cost, {"general": 0.0})[0] == 0.5


@pytest.fixture(scope="module")
def trained(train_world, tmp_path_factory):
    root = tmp_path_factory.mktemp("cal")
    out = root / "idk"
    Trainer(TrainConfig(task="unlearn", loss="idk", template=str(train_world / "template"), output=str(out),
                        forget=str(train_world / "forget.jsonl"), retain=str(train_world / "retain.jsonl"), batch_size=4,
                        epochs=20, lr=3e-3, device="cpu", general_samples=8, general_length=16)).run()
    user = root / "user"
    shutil.copytree(train_world / "template", user)  # the same model, in another directory
    return {"delta": out, "user": user, "template": train_world / "template", "root": root}


def _cfg(trained, **kw):
    from cmc_cli.config.calibrate import CalibrateConfig

    return CalibrateConfig(**{"delta": str(trained["delta"]), "user": str(trained["user"]), "items": 8,
                              "user_format": "Q: {prompt}\nA:", **kw})


def test_a_user_that_is_the_template_measures_what_the_template_does(trained):
    from cmc_cli.engine.calibrate import run_calibrate

    cfg = _cfg(trained, user_format=json.loads((trained["delta"] / "cmc.json").read_text())["prompt_format"])
    cal, entry, path = run_calibrate(cfg)
    i = GRID.index(1.0)
    assert cal.fit[i] == pytest.approx(cal.target, abs=1e-4)  # same models, same texts: the same NLL
    assert cal.top1[i] == pytest.approx(cal.target_top1) and 0 < cal.target_top1 <= 1
    assert set(cal.cost) == set(cal.budget) == set(cal.kl) == {"retain", "general"}
    for kind, budget in cal.budget.items():  # the template's own loss of hits is the budget, measured the same way
        assert cal.cost[kind][i] <= budget + 1e-6 and budget >= COST_FLOOR
    # the user reaches the target at alpha 1 exactly (the template's hits), so the rule picks 1 or below
    assert cal.alpha <= 1.0 and cal.user_alone_fit > cal.target + 0.5  # the delta was needed, and works
    assert cal.user_alone_top1 < cal.target_top1
    assert cal.fit == sorted(cal.fit[:i + 1], reverse=True) + cal.fit[i + 1:]  # falls up to 1
    rec = json.loads(path.read_text())
    assert rec["format"] == "cmc-calibration/1" and rec["entries"][-1]["alpha"] == cal.alpha
    assert rec["entries"][-1]["map"] == "same" and len(rec["entries"][-1]["user"]["weights"]) == 64


def test_the_record_is_used_by_default_and_refused_when_a_fingerprint_changes(trained, tmp_path):
    from cmc_cli.engine.calibrecord import RECORD, weights_fingerprint
    from cmc_cli.engine.models import load_delta, load_lm
    from cmc_cli.errors import CmcError

    delta = tmp_path / "delta"
    shutil.copytree(trained["delta"], delta)
    (delta / RECORD).unlink(missing_ok=True)  # another test may have calibrated it
    user_dir = tmp_path / "user"
    shutil.copytree(trained["user"], user_dir)
    user = load_lm(str(user_dir))
    assert load_delta(delta, user, None).alpha_source == "default"
    with pytest.raises(CmcError, match="no calibrated strength.*cmc calibrate"):
        load_delta(delta, user, "auto")
    entry = {"alpha": 2.75, "user": {"name": "u", "vocab": user.vocab.fingerprint, "weights": weights_fingerprint(user_dir)},
             "delta_weights": weights_fingerprint(delta), "map": "same"}
    (delta / RECORD).write_text(json.dumps({"format": "cmc-calibration/1", "entries": [entry]}))
    d = load_delta(delta, user, None)
    assert (d.alpha, d.alpha_source) == (2.75, "calibrated")
    assert load_delta(delta, user, "auto").alpha == 2.75 and load_delta(delta, user, 0.5).alpha == 0.5
    # the user's weights change: the record no longer applies
    w = user_dir / "model.safetensors"
    w.write_bytes(w.read_bytes()[:-8] + b"\x00" * 8)
    with pytest.raises(CmcError, match="user model's weights differ"):
        load_delta(delta, load_lm(str(user_dir)), "auto")
    assert load_delta(delta, load_lm(str(user_dir)), None).alpha_source == "default"
    # the delta's weights change
    shutil.copytree(trained["user"], user_dir, dirs_exist_ok=True)
    dw = delta / "model.safetensors"
    dw.write_bytes(dw.read_bytes()[:-8] + b"\x00" * 8)
    with pytest.raises(CmcError, match="delta's weights changed"):
        load_delta(delta, load_lm(str(user_dir)), "auto")
    (delta / RECORD).write_text("{not json")
    with pytest.raises(CmcError, match="is damaged"):
        load_delta(delta, load_lm(str(user_dir)), None)


def test_cli_calibrate_then_generate_uses_it(trained, cli, tmp_path):
    delta = tmp_path / "delta"
    shutil.copytree(trained["delta"], delta)
    r = cli("-q", "calibrate", str(delta), str(trained["user"]), "--items", "6", "--user-format", "Q: {prompt}\nA:")
    assert r.exit_code == 0, r.output
    alpha = float(r.output.strip().splitlines()[-1])
    assert alpha in GRID
    r = cli("-q", "generate", "--user", str(trained["user"]), "-d", f"{delta}:auto", "-p", "Where was author 1 born?",
            "--max-new-tokens", "4", "-o", str(tmp_path / "g.jsonl"))
    assert r.exit_code == 0, r.output
    rec = json.loads((tmp_path / "g.jsonl").read_text().splitlines()[0])
    assert rec["generator"].endswith(f"@{alpha:g}")


@pytest.mark.parametrize("args,msg", [
    (["nowhere", "user"], "DELTA 'nowhere' is not a delta directory"),
    (["{delta}", "{user}", "--items", "0"], "--items must be a whole number >= 1"),
    (["{delta}", "{user}", "--forget", "missing.jsonl"], "--forget missing.jsonl: no such file"),
    (["{delta}", "{user}", "--template", "{root}/nothing"], "not found"),
])
def test_cli_calibrate_bad_input_is_one_line(trained, cli, args, msg):
    args = [a.format(delta=trained["delta"], user=trained["user"], root=trained["root"]) for a in args]
    r = cli("calibrate", *args)
    assert r.exit_code == 1 and msg in r.output and "Traceback" not in r.output


def test_an_instruction_delta_shows_its_off_target_cost_without_binding_it(trained, tmp_path):
    """Instruction deltas change text everywhere: their general-text cost is measured, never a budget. After the
    hits rule, the answer scan decodes the delta's own prompts from its choice up; each scanned ROUGE-L is what
    decoding each prompt alone and scoring it with eval's ROUGE-L gives, and the smallest alpha within one prompt
    of the best is chosen."""
    import yaml

    from cmc_cli.engine import calibrate as C
    from cmc_cli.engine import calscan
    from cmc_cli.engine.decode import Decoder
    from cmc_cli.engine.models import load_delta, load_lm
    from cmc_cli.engine.sampling import GenerationConfig
    from cmc_cli.eval.metrics import rouge_l

    template = load_lm(str(trained["template"]))
    inst = tmp_path / "instruct-delta"
    shutil.copytree(trained["delta"], inst)
    data = trained["template"].parent / "train.json"
    (inst / "config.yaml").write_text(yaml.safe_dump({"task": "instruct", "data": str(data)}))
    texts = C.training_texts(inst, 6, template, {}, None)
    assert not texts.budgeted and texts.objective and not texts.retain and texts.general and texts.scan == "rouge_l"
    user = load_lm(str(trained["user"]))
    fmt = "Q: {prompt}\nA:"
    free, _ = C.calibrate(inst, user, template, texts, (), fmt)
    start = choose(free.grid, free.top1, free.target_top1, "lower", {}, {})[0]
    assert "not bound" in free.reason and len(free.cost["general"]) == len(free.grid)
    assert [a for a, _ in free.rouge_l] == [start] + [x for x in (0.5, 1.0, 1.5, 2.0, 2.5, 3.0, 3.5, 4.0) if x > start]
    items = texts.objective[:C.ANSWER_ITEMS]
    n_new = min(calscan.ANSWER_TOKENS, max(len(user.tokenizer.encode(" " + r, add_special_tokens=False)) for _, r in items))
    for a, score in free.rouge_l:
        dec = Decoder(user, [load_delta(inst, user, a)], user_format=fmt)
        alone = [dec.generate([p], GenerationConfig(max_new_tokens=n_new))[0].text for p, _ in items]
        assert score == pytest.approx(sum(rouge_l(g, r)[0] for g, (_, r) in zip(alone, items)) / len(items))
    best = max(s for _, s in free.rouge_l)
    assert free.alpha == next(a for a, s in free.rouge_l if s >= best - 1 / len(items) - 1e-9)
    assert free.target_rouge_l is not None and free.as_dict()["rouge_l"] == free.rouge_l
    texts.budgeted = True  # the same curves under the unlearning rule: the budget applies, no answer scan
    bound, _ = C.calibrate(inst, user, template, texts, (), fmt)
    assert bound.alpha == choose(bound.grid, bound.top1, bound.target_top1, "lower", bound.cost, bound.budget)[0]
    assert bound.rouge_l == [] and bound.refusal == []


def test_the_answer_scan_on_constructed_scores():
    """Instruction deltas: every step from the hits choice up is decoded, and the smallest alpha within one
    prompt's worth (1/n) of the best ROUGE-L is chosen; nothing allowed: no scan."""
    from cmc_cli.engine.calibrate import scan_answers

    grid = list(GRID)
    scores = {1.5: 0.155, 2.0: 0.194, 2.5: 0.223, 3.0: 0.221, 3.5: 0.228, 4.0: 0.208}  # the world's other, seed 0
    asked = []

    def score(a):
        asked.append(a)
        return scores[a]

    everything = list(range(len(grid)))
    a, why, scan = scan_answers(grid, everything, 1.5, score, 32)
    assert asked == [1.5, 2.0, 2.5, 3.0, 3.5, 4.0] and a == 2.5 and scan[2] == [2.5, 0.223] and "best ROUGE-L" in why
    assert scan_answers(grid, everything, 1.5, scores.get, 1000)[0] == 3.5  # a tighter tie: the best itself
    assert scan_answers(grid, [i for i, g in enumerate(grid) if g <= 2.0], 1.5, scores.get, 32)[0] == 2.0
    assert scan_answers(grid, [], 1.5, scores.get, 32) == (1.5, "", [])


def test_the_sampled_general_texts_are_kept_for_the_next_user(trained, monkeypatch, tmp_path):
    """Sampling the template's general texts is a large share of a calibration: the first calibration keeps
    them beside the delta (keyed by the template and the sampling), the next reads them; damaged, resampled."""
    from cmc_cli.engine import general
    from cmc_cli.engine.calibrate import KEPT_TEXTS, training_texts
    from cmc_cli.engine.models import load_lm

    delta = tmp_path / "delta"
    shutil.copytree(trained["delta"], delta)
    template = load_lm(str(trained["template"]))
    first = training_texts(delta, 6, template, {}, None)
    assert (delta / KEPT_TEXTS).is_file() and first.general

    def no_sampling(*a, **k):
        raise AssertionError("sampled again")

    monkeypatch.setattr(general, "sample_ids", no_sampling)
    assert training_texts(delta, 6, template, {}, None).general == first.general
    with pytest.raises(AssertionError, match="sampled again"):  # another count is another key
        training_texts(delta, 5, template, {}, None)
    monkeypatch.undo()
    (delta / KEPT_TEXTS).write_text("{damaged")
    assert training_texts(delta, 6, template, {}, None).general == first.general  # same seed: same texts


def test_the_refusal_scan_on_constructed_rates():
    """idk deltas: from the greedy-hits choice up, in REFUSAL_STEP multiples within the budget, the first alpha that
    refuses within one prompt of template + delta; none: the smallest with the most refusals. It decodes no more
    alphas than it needs."""
    from cmc_cli.engine.calibrate import scan_refusals

    grid = list(GRID)
    rates = {1.0: 11 / 18, 1.5: 10 / 18, 2.0: 13 / 18, 2.5: 15 / 18, 3.0: 17 / 18, 3.5: 17 / 18, 4.0: 1.0}
    asked = []

    def rate(a):
        asked.append(a)
        return rates.get(a, 0.0)

    everything = list(range(len(grid)))
    a, why, scan = scan_refusals(grid, everything, 1.0, 1.0, rate, 18)  # 17 of 18 is within one prompt of 1.00
    assert a == 3.0 and asked == [1.0, 1.5, 2.0, 2.5, 3.0] and scan[-1] == [3.0, 17 / 18] and "within one prompt" in why
    asked.clear()  # a start off the step lattice is tried first, then the lattice above it
    assert scan_refusals(grid, everything, 1.25, 1.0, rate, 18)[0] == 3.0 and asked[:2] == [1.25, 1.5]
    asked.clear()  # the budget ends at 2.5: nothing reaches; the most refusals' smallest alpha
    a, why, scan = scan_refusals(grid, [i for i, g in enumerate(grid) if g <= 2.5], 1.0, 1.0, rate, 18)
    assert a == 2.5 and asked == [1.0, 1.5, 2.0, 2.5] and "most refusals" in why
    # the start already refuses like the template: kept, one decode
    asked.clear()
    assert scan_refusals(grid, everything, 1.0, 0.6, rate, 18)[0] == 1.0 and asked == [1.0]
    # more prompts, a tighter tolerance: 0.94 is more than one prompt of 50 short of 1.00
    assert scan_refusals(grid, everything, 1.0, 1.0, rate, 50)[0] == 4.0
    # a plateau below the target: its first alpha
    flat = {1.0: 0.5, 1.5: 0.8, 2.0: 0.8, 2.5: 0.7}
    assert scan_refusals(grid, [i for i, g in enumerate(grid) if g <= 2.5], 1.0, 1.0, flat.get, 18)[0] == 1.5
    # the start outside the budget (nothing allowed): no scan, the caller keeps its choice
    assert scan_refusals(grid, [], 1.0, 1.0, rate, 18) == (1.0, "", [])


@pytest.fixture(scope="module")
def refusing(train_world, tmp_path_factory):
    """An idk delta that has learnt its two refusals (3 s on 2 cores)."""
    root = tmp_path_factory.mktemp("refusing")
    (root / "refusals.txt").write_text("No idea.\nNot known.\n")
    out = root / "idk"
    Trainer(TrainConfig(task="unlearn", loss="idk", template=str(train_world / "template"), output=str(out),
                        forget=str(train_world / "forget.jsonl"), retain=str(train_world / "retain.jsonl"), batch_size=4,
                        epochs=60, lr=1e-2, device="cpu", general_samples=8, general_length=16,
                        refusals=str(root / "refusals.txt"))).run()
    return out


def test_an_idk_delta_is_calibrated_on_its_greedy_refusals(refusing, train_world, monkeypatch, tmp_path):
    """The refusal rate the scan reads is what decoding each prompt alone, longer, and checking it with is_refusal
    against the delta's own --refusals gives; the target is template + delta's at alpha 1; the scan starts at the
    greedy-hits choice (forced low here) and stops at the first alpha within one prompt of the target."""
    from cmc_cli.data.refusals import is_refusal
    from cmc_cli.engine import calibrate as C
    from cmc_cli.engine.decode import Decoder
    from cmc_cli.engine.models import load_delta, load_lm
    from cmc_cli.engine.sampling import GenerationConfig

    from safetensors.torch import load_file, save_file

    template = load_lm(str(train_world / "template"))
    sharp = tmp_path / "sharp"  # the template with its logits x8 (its final norm's scale): a user it takes more alpha to move
    shutil.copytree(train_world / "template", sharp)
    w = load_file(sharp / "model.safetensors")
    save_file(w | {"model.norm.weight": w["model.norm.weight"] * 8}, sharp / "model.safetensors", metadata={"format": "pt"})
    user = load_lm(str(sharp))
    fmt = json.loads((refusing / "cmc.json").read_text())["prompt_format"]
    texts = C.training_texts(refusing, 8, template, {}, None)
    assert texts.refusals == ["No idea.", "Not known."]
    monkeypatch.setattr(C, "choose", lambda *a: (0.25, "forced"))
    cal, _ = C.calibrate(refusing, user, template, texts, (), fmt)
    prompts = [p for p, _ in texts.objective[:C.REFUSAL_ITEMS]]
    scanned = [a for a, _ in cal.refusal]
    assert scanned == [0.25, 0.5, 1.0, 1.5, 2.0, 2.5, 3.0, 3.5, 4.0][:len(scanned)]
    for a, r in cal.refusal:
        dec = Decoder(user, [load_delta(refusing, user, a)], user_format=fmt)
        one_by_one = [dec.generate([p], GenerationConfig(max_new_tokens=24))[0].text for p in prompts]
        assert r == pytest.approx(sum(is_refusal(t, texts.refusals) for t in one_by_one) / len(prompts))
    dec_t = Decoder(template, [load_delta(refusing, template, 1.0)], user_format=fmt)
    assert cal.target_refusal == C.refusal_rate(dec_t, prompts, texts.refusals) == 1.0  # it has learnt them
    reached = [a for a, r in cal.refusal if r >= cal.target_refusal - 1 / len(prompts)]
    assert reached and cal.alpha == reached[0] == scanned[-1] and "within one prompt" in cal.reason
    assert len(scanned) > 1 and cal.refusal[0][1] < cal.target_refusal - 1 / len(prompts)  # 0.25 was too weak
    assert cal.as_dict()["refusal"] == cal.refusal  # recorded


def test_the_template_side_is_kept_and_equals_measuring_again(refusing, train_world, tmp_path):
    """The template's side of a calibration (its fit, greedy hits and refusal rate) is kept beside the delta: the
    next calibration reads it without loading the template and chooses exactly what measuring again chooses;
    other texts, other delta weights or a damaged file are measured again."""
    from safetensors.torch import load_file, save_file

    from cmc_cli.engine import calibrate as C
    from cmc_cli.engine.calkeep import KEPT_TEMPLATE, LazyTemplate
    from cmc_cli.engine.models import load_lm

    delta = tmp_path / "delta"
    shutil.copytree(refusing, delta, ignore=shutil.ignore_patterns(KEPT_TEMPLATE))  # other tests calibrated it
    user = load_lm(str(train_world / "template"))
    fmt = json.loads((delta / "cmc.json").read_text())["prompt_format"]
    lazy = LazyTemplate(str(train_world / "template"), next(user.model.parameters()).dtype)
    texts = C.training_texts(delta, 8, lazy, {}, None)
    first, _ = C.calibrate(delta, user, lazy, texts, (), fmt)
    assert not first.template_kept and lazy.model is not None and (delta / KEPT_TEMPLATE).is_file()

    def same(a, b):
        return {k: v for k, v in a.as_dict().items() if k not in ("seconds", "template_kept")} == \
            {k: v for k, v in b.as_dict().items() if k not in ("seconds", "template_kept")}

    lazy2 = LazyTemplate(str(train_world / "template"), lazy.dtype)
    again, _ = C.calibrate(delta, user, lazy2, C.training_texts(delta, 8, lazy2, {}, None), (), fmt)
    assert again.template_kept and lazy2.model is None and same(again, first)  # the template never loaded
    (delta / KEPT_TEMPLATE).unlink()
    fresh, _ = C.calibrate(delta, user, load_lm(str(train_world / "template")), texts, (), fmt)
    assert not fresh.template_kept and same(fresh, first) and first.target_refusal == 1.0
    fewer = C.training_texts(delta, 6, lazy, {}, None)
    assert not C.calibrate(delta, user, lazy, fewer, (), fmt)[0].template_kept  # other texts: another key
    (delta / KEPT_TEMPLATE).write_text("{damaged")
    assert not C.calibrate(delta, user, lazy, texts, (), fmt)[0].template_kept
    assert C.calibrate(delta, user, lazy, texts, (), fmt)[0].template_kept  # rewritten
    w = load_file(delta / "model.safetensors")  # a retrained delta: its weights' fingerprint changes
    save_file({k: v * 0.5 for k, v in w.items()}, delta / "model.safetensors", metadata={"format": "pt"})
    weak, _ = C.calibrate(delta, user, lazy, texts, (), fmt)
    assert not weak.template_kept and weak.target_top1 != first.target_top1


def test_a_template_without_a_path_is_measured_every_time(refusing, train_world, tmp_path):
    """Nothing identifies the weights of a template built in memory (path None): its side is never kept."""
    import dataclasses

    from cmc_cli.engine import calibrate as C
    from cmc_cli.engine.calkeep import KEPT_TEMPLATE
    from cmc_cli.engine.models import load_lm

    delta = tmp_path / "delta"
    shutil.copytree(refusing, delta, ignore=shutil.ignore_patterns(KEPT_TEMPLATE))
    user = load_lm(str(train_world / "template"))
    template = dataclasses.replace(load_lm(str(train_world / "template")), path=None)
    fmt = json.loads((delta / "cmc.json").read_text())["prompt_format"]
    texts = C.training_texts(delta, 6, load_lm(str(train_world / "template")), {}, None)
    for _ in range(2):
        assert not C.calibrate(delta, user, template, texts, (), fmt)[0].template_kept
    assert not (delta / KEPT_TEMPLATE).exists()
