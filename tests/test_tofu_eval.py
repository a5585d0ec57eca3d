"""TOFU metrics against hand-computed values, and the evaluator end to end (resume included)."""

import json
import math

import pytest

from cmc_cli.data.tofu import load_tofu_eval
from cmc_cli.engine.decode import Decoder
from cmc_cli.engine.models import load_delta, load_lm
from cmc_cli.engine.sampling import GenerationConfig
from cmc_cli.errors import DataError
from cmc_cli.eval.metrics import harmonic_mean
from cmc_cli.eval.tofu import (
    TofuEvaluator, aggregate, choice_prob, forget_quality, rouge_l_recall, truth_ratio,
    truth_ratio_score,
)
from cmc_cli.zoo.models import make_random_delta, make_tiny_llama


def test_rouge_l_recall_on_known_pairs():
    # reference 5 tokens; LCS with the generation: cat(s), home -> 2/5 (stemming: cats -> cat)
    assert rouge_l_recall("cat ran home", "The cats were running home") == pytest.approx(0.4)
    assert rouge_l_recall("The cats were running home", "The cats were running home") == 1.0
    assert rouge_l_recall("", "The cats were running home") == 0.0
    assert rouge_l_recall("he runs", "running") == 1.0  # both stem to 'run'
    assert rouge_l_recall("home the", "the home") == pytest.approx(0.5)  # order matters: LCS 1 of 2


def test_truth_ratio_by_hand_both_sides_of_one():
    assert truth_ratio(1.0, [2.0, 0.0]) == pytest.approx(1.0)  # mean perturbed NLL = base NLL
    r_low = truth_ratio(0.5, [1.5])  # the model prefers the right answer: R = e^-1 < 1
    assert r_low == pytest.approx(math.exp(-1))
    r_high = truth_ratio(2.0, [1.0])  # prefers the wrong one: R = e > 1
    assert r_high == pytest.approx(math.e)
    assert truth_ratio_score([r_low], "forget") == pytest.approx(math.exp(-1))  # min(R, 1/R)
    assert truth_ratio_score([r_high], "forget") == pytest.approx(math.exp(-1))
    assert truth_ratio_score([r_low], "retain") == pytest.approx(1 - math.exp(-1))  # max(0, 1 - R)
    assert truth_ratio_score([r_high], "retain") == 0.0
    assert truth_ratio_score([r_low, r_high], "world_facts") == pytest.approx((1 - math.exp(-1)) / 2)


def test_choice_probability_ks_and_harmonic_mean_by_hand():
    assert choice_prob(0.0, [math.log(2), math.log(4)]) == pytest.approx(1 / 1.75)
    # overlapping samples: the exact two-sided p-value is the share of the C(8, 4) = 70 ways of splitting the
    # pooled values into two groups of 4 whose KS statistic reaches the observed one (enumerated here)
    from itertools import combinations

    def ks(x, y):
        return max(abs(sum(v <= t for v in x) / len(x) - sum(v <= t for v in y) / len(y)) for t in x + y)

    a, b = [1.0, 2.0, 3.0, 5.0], [4.0, 6.0, 7.0, 8.0]
    pooled, d = a + b, ks(a, b)
    splits = [([pooled[i] for i in c], [pooled[i] for i in range(8) if i not in c]) for c in combinations(range(8), 4)]
    p_exact = sum(ks(x, y) >= d - 1e-12 for x, y in splits) / len(splits)
    assert d == 0.75 and forget_quality(a, b) == pytest.approx(p_exact)
    # disjoint samples of 5 and 5: exact two-sided p = 2 / C(10, 5)
    assert forget_quality([1, 2, 3, 4, 5], [6, 7, 8, 9, 10]) == pytest.approx(2 / 252)
    assert harmonic_mean([1.0, 0.5]) == pytest.approx(2 / 3)
    assert harmonic_mean([1.0, 0.0, 0.5]) == 0.0
    assert math.isnan(harmonic_mean([]))


def test_aggregate_by_hand():
    recs = [
        {"rouge_l": 1.0, "answer_nll": 0.0, "base_nll": 0.5, "perturbed_nlls": [1.5]},
        {"rouge_l": 0.0, "answer_nll": math.log(2), "base_nll": 2.0, "perturbed_nlls": [1.0, 1.0]},
    ]
    f = aggregate("forget", recs)
    assert (f.n, f.rouge_l) == (2, 0.5)
    assert f.prob == pytest.approx((1 + 0.5) / 2)
    assert f.truth_ratio == pytest.approx(math.exp(-1))  # both items: min(R, 1/R) = e^-1
    w = aggregate("world_facts", recs)
    expected_p = (choice_prob(0.0, [1.5]) + choice_prob(math.log(2), [1.0, 1.0])) / 2
    assert w.prob == pytest.approx(expected_p)
    assert w.truth_ratio == pytest.approx(((1 - math.exp(-1)) + 0.0) / 2)
    assert aggregate("retain", [{"answer_nll": 1.0, "base_nll": None, "perturbed_nlls": []}]).truth_ratio is None


def test_tofu_files_are_validated(tmp_path):
    p = tmp_path / "forget.jsonl"
    p.write_text(json.dumps({"question": "Q?", "answer": "A.", "perturbed_answer": ["B."]}) + "\n")
    with pytest.raises(DataError, match="forget.jsonl:1: .*paraphrased_answer"):
        load_tofu_eval(p, "forget")
    p.write_text(json.dumps({"question": "Q?", "answer": "A.", "paraphrased_answer": "A!", "perturbed_answer": [3]}) + "\n")
    with pytest.raises(DataError, match="forget.jsonl:1: 'perturbed_answer'"):
        load_tofu_eval(p, "forget")


def tofu_rows(prefix, n):
    return [{"question": f"Where was {prefix} {i} born?", "answer": f"{prefix} {i} was born in the harbour town.",
             "paraphrased_answer": f"The harbour town is where {prefix} {i} was born.",
             "perturbed_answer": [f"{prefix} {i} was born in the mountains.", f"{prefix} {i} was born at sea.",
                                  f"{prefix} {i} was born in a city."]} for i in range(n)]


@pytest.fixture(scope="module")
def tofu_world(tmp_path_factory, tiny_tokenizers):
    root = tmp_path_factory.mktemp("tofu")
    for name, prefix, n in (("forget", "author", 5), ("retain", "writer", 6), ("world_facts", "city", 3)):
        (root / f"{name}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in tofu_rows(prefix, n)))
    return {"root": root, "user": make_tiny_llama(tiny_tokenizers["bl"], root / "user", hidden=48, seed=3),
            "delta": make_random_delta(tiny_tokenizers["spm"], root / "delta", seed=5, head_std=0.5)}


def test_evaluator_end_to_end_and_resume(tofu_world, tmp_path):
    root = tofu_world["root"]
    sets = {k: load_tofu_eval(root / f"{k}.jsonl", k) for k in ("forget", "retain", "world_facts")}
    user = load_lm(str(tofu_world["user"]))
    dec = Decoder(user, [load_delta(tofu_world["delta"], user, 1.0)])
    full = TofuEvaluator(dec, sets, max_new_tokens=8, batch_size=4).run(tmp_path / "a.jsonl")
    assert {k: v.n for k, v in full.items()} == {"forget": 5, "retain": 6, "world_facts": 3}
    # P of the forget and retain sets, from scratch: the combined model teacher-forced on each answer,
    # exp(-mean NLL of its tokens), averaged over items
    for kind in ("forget", "retain"):
        probs = []
        for item in sets[kind]:
            a_ids = dec.user_answer_ids(item.question, item.answer)
            forced = dec.generate([item.question], GenerationConfig(max_new_tokens=len(a_ids)), force=[a_ids])[0]
            nll = -sum(forced.token_logprobs) / len(a_ids)
            probs.append(math.exp(-nll))
        assert full[kind].prob == pytest.approx(sum(probs) / len(probs), rel=1e-4)
    # interrupted after 7 items, the last line torn: the rerun evaluates only what is missing
    lines = (tmp_path / "a.jsonl").read_text().splitlines()
    assert len(lines) == 14
    (tmp_path / "b.jsonl").write_text("\n".join(lines[:7]) + "\n" + lines[7][:30])
    progress = []
    again = TofuEvaluator(dec, sets, max_new_tokens=8, batch_size=4).run(
        tmp_path / "b.jsonl", on_progress=lambda d, t: progress.append(d))
    assert progress[0] == 7
    for k in full:
        assert again[k].as_dict() == pytest.approx(full[k].as_dict())
    # the delta changes the combined probabilities
    alone = TofuEvaluator(Decoder(user, []), sets, max_new_tokens=8).run()
    assert alone["forget"].prob != pytest.approx(full["forget"].prob)


def test_cli_eval_tofu_writes_the_report_and_resumes(tofu_world, workdir, cli):
    root = tofu_world["root"]
    args = ["eval", "tofu", "--user", tofu_world["user"], "-d", f"{tofu_world['delta']}:0.5",
            "--forget", root / "forget.jsonl", "--retain", root / "retain.jsonl", "--world-facts", root / "world_facts.jsonl",
            "--retain-model", tofu_world["user"], "--max-new-tokens", "6", "-o", "ev"]
    r = cli(*args)
    assert r.exit_code == 0, r.output
    res = json.loads((workdir / "ev" / "results.json").read_text())
    assert [row["label"] for row in res["rows"]] == ["user", "user + delta@0.5"]
    alone, with_delta = res["rows"]
    assert set(alone["sets"]) == {"forget", "retain", "world_facts"}
    assert alone["sets"]["forget"]["n"] == 5
    assert alone["forget_quality"] == pytest.approx(1.0)  # the retain model is the same model here
    assert with_delta["forget_quality"] is not None
    assert alone["model_utility"] == pytest.approx(harmonic_mean(
        [alone["sets"][k][m] for k in ("retain", "world_facts") for m in ("RL", "P", "TR")]))
    md = (workdir / "ev" / "report.md").read_text()
    assert "| user + delta@0.5 |" in md and "Forget TR" in md
    items = {p.name: p.read_text() for p in (workdir / "ev" / "items").iterdir()}
    assert len(items) == 3
    r = cli(*args)  # everything is already there: nothing is recomputed, same results
    assert r.exit_code == 0, r.output
    assert json.loads((workdir / "ev" / "results.json").read_text())["rows"] == res["rows"]
    assert {p.name: p.read_text() for p in (workdir / "ev" / "items").iterdir()} == items


@pytest.mark.parametrize("extra,message", [
    ([], "give at least one TOFU set"),
    (["--retain", "RETAIN", "--retain-model", "USER"], "--retain-model is for forget quality and needs --forget"),
    (["--forget", "missing.jsonl"], "missing.jsonl does not exist"),
    (["--retain", "RETAIN", "--no-alone"], "--no-alone leaves nothing"),
])
def test_cli_eval_tofu_errors(tofu_world, workdir, cli, extra, message):
    extra = [str(tofu_world["root"] / "retain.jsonl") if x == "RETAIN" else str(tofu_world["user"]) if x == "USER" else x
             for x in extra]
    r = cli("eval", "tofu", "--user", tofu_world["user"], *extra)
    assert r.exit_code == 1, r.output
    assert message in r.output


def _md_row(md: str, label: str, header_has: str) -> dict:
    """The cells of `label`'s row in the report.md table whose header has `header_has`, by column title."""
    lines = md.splitlines()
    h = next(i for i, x in enumerate(lines) if x.startswith("| model") and header_has in x)
    header = [c.strip() for c in lines[h].strip("|").split("|")]
    for x in lines[h + 2:]:
        cells = [c.strip() for c in x.strip("|").split("|")]
        if cells[0] == label:
            return dict(zip(header, cells))
    raise AssertionError(f"no row {label}")


def test_cli_eval_tofu_several_alphas_held_out_and_no_alone_pairing(tofu_world, workdir, cli):
    """One run holds the delta at several strengths (one row each, equal to a run at that strength alone), the
    held-out set has its own option and title and a paired column, and the paired columns survive --no-alone: the
    user alone is read back from the earlier run's records in --out, not regenerated."""
    root = tofu_world["root"]
    held = [dict(r, key=["is"]) for r in tofu_rows("painter", 6)]  # "is": in some of the tiny user's answers
    (workdir / "heldout.jsonl").write_text("".join(json.dumps(r) + "\n" for r in held))
    sets = ["--forget", root / "forget.jsonl", "--held-out", workdir / "heldout.jsonl", "--max-new-tokens", "6"]
    r = cli("eval", "tofu", "--user", tofu_world["user"], "-d", tofu_world["delta"], "--alpha", "0.5,2", *sets, "-o", "ev")
    assert r.exit_code == 0, r.output
    res = json.loads((workdir / "ev" / "results.json").read_text())
    assert [row["label"] for row in res["rows"]] == ["user", "user + delta@0.5", "user + delta@2"]
    assert set(res["rows"][0]["sets"]) == {"forget", "heldout"} and res["settings"]["alpha"] == [0.5, 2.0]
    md = (workdir / "ev" / "report.md").read_text()
    assert "Held-out RL" in md and "World facts" not in md
    # the paired columns by hand: the mean over items of (row - alone), per item, from the per-item values
    alone, _, strong = res["rows"]
    cell = _md_row(md, "user + delta@2", "Δ forget refusal")
    for kind, metric, title in (("forget", "refusal", "Δ forget refusal vs alone [95% CI]"),
                                ("heldout", "key_hit", "Δ held-out key acc. vs alone [95% CI]")):
        mine, theirs = strong["sets"][kind]["per_item"][metric], alone["sets"][kind]["per_item"][metric]
        assert len(mine) == len(theirs) == (5 if kind == "forget" else 6)
        assert kind == "forget" or mine != theirs  # the held-out column measures a real change
        assert float(cell[title].split()[0]) == pytest.approx(sum(a - b for a, b in zip(mine, theirs)) / len(mine), abs=0.006)
    # a row at one strength equals a separate run at that strength (its own items file, its own decoder)
    r = cli("eval", "tofu", "--user", tofu_world["user"], "-d", f"{tofu_world['delta']}:2", *sets, "-o", "one")
    assert r.exit_code == 0, r.output
    assert json.loads((workdir / "one" / "results.json").read_text())["rows"][1]["sets"] == strong["sets"]
    # --no-alone into the same --out: the alone row is read back (its items file untouched), the pairing kept
    alone_file = workdir / "ev" / "items" / "user.jsonl"
    before = alone_file.read_text()
    r = cli("eval", "tofu", "--user", tofu_world["user"], "-d", tofu_world["delta"], "--alpha", "2", "--no-alone",
            *sets, "-o", "ev")
    assert r.exit_code == 0, r.output
    again = json.loads((workdir / "ev" / "results.json").read_text())["rows"]
    assert [row["stored"] for row in again] == [True, False] and alone_file.read_text() == before
    md2 = (workdir / "ev" / "report.md").read_text()
    assert _md_row(md2, "user (read back from --out)", "Δ forget refusal")
    assert _md_row(md2, "user + delta@2", "Δ forget refusal") == cell
    # --no-alone into a fresh --out: no alone row, no paired column
    r = cli("eval", "tofu", "--user", tofu_world["user"], "-d", tofu_world["delta"], "--no-alone", *sets, "-o", "fresh")
    assert r.exit_code == 0, r.output
    assert [row["label"] for row in json.loads((workdir / "fresh" / "results.json").read_text())["rows"]] == ["user + delta@1"]
    assert "Δ forget" not in (workdir / "fresh" / "report.md").read_text()


def test_cli_eval_tofu_stop_and_a_resume_under_other_settings_is_refused(tofu_world, workdir, cli):
    root = tofu_world["root"]
    base = ["eval", "tofu", "--user", tofu_world["user"], "--forget", root / "forget.jsonl", "--max-new-tokens", "8"]
    r = cli(*base, "-o", "free")
    assert r.exit_code == 0, r.output
    gens = [json.loads(x)["generation"] for x in (workdir / "free" / "items" / "user.jsonl").read_text().splitlines()]
    stop = next(g[len(g) // 2:len(g) // 2 + 2] for g in gens if len(g) > 4)  # a string some answer contains
    r = cli(*base, "--stop", stop, "-o", "stopped")
    assert r.exit_code == 0, r.output
    cut = [json.loads(x)["generation"] for x in (workdir / "stopped" / "items" / "user.jsonl").read_text().splitlines()]
    assert cut == [g.split(stop)[0] if stop in g else g for g in gens] and cut != gens
    r = cli(*base, "--user-format", "Q: {prompt}\nA:", "-o", "free")
    assert r.exit_code == 1 and "--user-format 'auto'" in r.output and "another --out" in r.output, r.output
    r = cli(*base, "--stop", stop, "-o", "free")
    assert r.exit_code == 1 and "--stop" in r.output, r.output


@pytest.mark.parametrize("value,message", [("1,,2", "give numbers or 'auto'"), ("x", "must be a number or 'auto'"),
                                           ("2,2", "given twice"), ("inf", "finite")])
def test_eval_alpha_list_is_checked(tofu_world, workdir, cli, value, message):
    r = cli("eval", "tofu", "--user", tofu_world["user"], "-d", tofu_world["delta"], "--alpha", value,
            "--forget", tofu_world["root"] / "forget.jsonl")
    assert r.exit_code == 1 and message in r.output and r.output.count("\n") == 1, r.output
