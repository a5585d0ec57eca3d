"""The model world builds deterministically, completely, and its models learned what they were taught."""

import json

import pytest

from cmc_cli.engine.decode import Decoder

from cmc_cli.engine.models import load_lm

from cmc_cli.engine.sampling import GenerationConfig
from cmc_cli.eval.metrics import rouge_l
from cmc_cli.zoo.build import QA_FORMAT, REDUCED_ZOO, _dir_hash, _train_job, artifact_names, build_zoo


def test_every_artifact_is_built_and_hashed(reduced_zoo):
    arts = reduced_zoo.manifest()["artifacts"]
    expected = {"data", "tokenizer-spm", "tokenizer-bl", "template-base", "template-tofu", "large-base", "large-tofu",
                "other-base", "other-tofu", "template-retain90"}
    expected |= {f"{k}-{t}-ft" for k in ("template", "large", "other") for t in ("instruct", "unlearn")}
    assert set(arts) == expected == set(artifact_names(reduced_zoo))
    for name, e in arts.items():
        assert _dir_hash(reduced_zoo.root / e["path"]) == e["sha256"], name
    cfg = json.loads((reduced_zoo.model("other-tofu") / "config.json").read_text())
    assert cfg["model_type"] == "qwen2"
    assert json.loads((reduced_zoo.model("large-base") / "config.json").read_text())["hidden_size"] == 96


def test_a_rebuild_builds_nothing(reduced_zoo):
    events = []
    build_zoo(REDUCED_ZOO, reduced_zoo.root, on_event=lambda kind, name, info=None: events.append(kind))
    assert events and set(events) == {"have"}


def test_same_spec_same_weights(reduced_zoo, tmp_path):
    """A model trained again from the same spec and seed has the same bytes."""
    spec = REDUCED_ZOO.models[0]
    from dataclasses import asdict

    job = {"name": "template-base", "kind": "base", "model": asdict(spec), "tokenizer": str(reduced_zoo.tokenizer("spm")),
           "data": str(reduced_zoo.data("biographies")), "out": str(tmp_path / "again"), "seed": REDUCED_ZOO.seed}
    _train_job(job)
    assert _dir_hash(tmp_path / "again") == reduced_zoo.manifest()["artifacts"]["template-base"]["sha256"]


@pytest.mark.parametrize("key", ["template", "large", "other"])
def test_tofu_models_answer_their_questions(reduced_zoo, key):
    qa = [json.loads(x) for x in reduced_zoo.data("qa_all").read_text().splitlines()][::17]
    dec = Decoder(load_lm(str(reduced_zoo.model(f"{key}-tofu"))), user_format=QA_FORMAT)
    gens = dec.generate([r["question"] for r in qa], GenerationConfig(max_new_tokens=32))
    recall = sum(rouge_l(g.text, r["answer"])[0] for g, r in zip(gens, qa)) / len(qa)
    assert recall > 0.9, [(g.text, r["answer"]) for g, r in zip(gens, qa)][:3]


def test_cli_zoo_build_and_info(reduced_zoo, workdir, cli):
    r = cli("-q", "zoo", "build", "--size", "reduced", "--root", reduced_zoo.root)
    assert r.exit_code == 0, r.output
    assert r.stdout.strip() == str(reduced_zoo.root)
    r = cli("zoo", "info", "--size", "reduced", "--root", reduced_zoo.root)
    assert r.exit_code == 0 and " no " not in r.output
    for name in ("other-tofu", "template-retain90", "large-instruct-ft", "other-unlearn-ft"):
        assert name in r.output, name
    r = cli("zoo", "build", "--size", "huge")
    assert r.exit_code == 1 and "--size must be one of full, reduced" in r.output


def test_direct_unlearning_baseline_raises_forget_loss_and_keeps_retain(reduced_zoo):
    import torch
    import torch.nn.functional as F

    from cmc_cli.data.instruct import collate
    from cmc_cli.engine.combine import IGNORE
    from cmc_cli.zoo.lm import encode_qa, unlearn_lm

    m = load_lm(str(reduced_zoo.model("template-tofu")))
    m.model.requires_grad_(True)

    def enc(name):
        rows = [json.loads(x) for x in reduced_zoo.data(name).read_text().splitlines()]
        return encode_qa([(r["question"], r["answer"]) for r in rows], m.tokenizer, QA_FORMAT, 128)

    forget, retain = enc("forget10"), enc("retain90")[:40]

    def ce(items):
        b = collate(items, m.tokenizer.eos_token_id)
        with torch.no_grad():
            logits = m.model(input_ids=b["input_ids"], attention_mask=b["attention_mask"]).logits
        return float(F.cross_entropy(logits.flatten(0, 1), b["targets"].flatten(), ignore_index=IGNORE))

    f0, r0 = ce(forget), ce(retain)
    res = unlearn_lm(m.model, forget, retain, m.tokenizer.eos_token_id, 3e-4, 8, 60, 0, retain_weight=3.0,
                     stop_forget_loss=6.0)
    assert res.steps <= 60
    assert ce(forget) > f0 + 2.0
    assert ce(retain) < r0 + 1.0


def test_jobs_start_only_after_the_model_they_fine_tune(tmp_path, monkeypatch):
    """The scheduler (one worker here) runs every job once, each after the job it starts from."""
    from cmc_cli.zoo import build

    zoo = build.Zoo(tmp_path, REDUCED_ZOO)
    jobs = build.model_jobs(zoo)
    names = [j["name"] for j in jobs]
    assert len(names) == len(set(names)) == 3 * 4 + 1
    ran = []

    def fake(job):
        assert job["after"] is None or job["after"] in ran, (job["name"], ran)
        ran.append(job["name"])
        build.Path(job["out"]).mkdir(parents=True)
        (build.Path(job["out"]) / "w").write_text(job["name"])
        return {"name": job["name"], "loss": 0.0, "seconds": 0.0}

    monkeypatch.setattr(build, "_train_job", fake)
    events = []
    build._run_jobs(zoo, jobs, 1, lambda kind, name, info=None: events.append((kind, name)))
    assert sorted(ran) == sorted(names) and ran[0] == "large-base"  # the most expensive chain first
    by = {j["name"]: j for j in jobs}
    assert by["other-instruct-ft"]["after"] == "other-base" and by["other-unlearn-ft"]["after"] == "other-tofu"
    assert by["other-unlearn-ft"]["retain"].endswith("retain90.jsonl")
    ran.clear()
    build._run_jobs(zoo, jobs, 1, lambda kind, name, info=None: events.append((kind, name)))
    assert ran == []  # all recorded in the manifest: nothing reruns
