"""`cmc demo` on the reduced world: the pipeline runs end to end and its effects point the way the demo
claims, with fixed seeds, so a regression in any stage (world, map, training, decoding, scoring) shows."""

import json

import pytest


@pytest.fixture(scope="module")
def demo_result(reduced_zoo, tmp_path_factory):
    from typer.testing import CliRunner

    from cmc_cli.app import app

    out = tmp_path_factory.mktemp("demo") / "out"
    r = CliRunner().invoke(app, ["demo", "--size", "reduced", "--root", str(reduced_zoo.root), "-o", str(out),
                                 "--eval-limit", "40"])
    assert r.exit_code == 0, r.output
    assert "Table 1" in r.output and "Table 2" in r.output
    return json.loads((out / "results.json").read_text()), out


def _row(rows, label):
    return next(r for r in rows if r["label"] == label)


def test_unlearning_transfers_to_the_other_vocabulary_and_beats_the_shuffled_control(demo_result):
    res, _ = demo_result
    t2 = res["table2"]
    for key in ("template", "large", "other"):
        alone = _row(t2, key)
        with_delta = _row(t2, f"{key} + delta" + (" (pm-mined map)" if key == "other" else ""))
        # the forget set is forgotten (ROUGE-L recall falls by at least 0.3) ...
        assert with_delta["sets"]["forget"]["RL"] < alone["sets"]["forget"]["RL"] - 0.3, key
        # ... while the retain set stays within 0.15
        assert with_delta["sets"]["retain"]["RL"] > alone["sets"]["retain"]["RL"] - 0.15, key
    shuffled = _row(t2, "other + delta (shuffled map)")
    pm = _row(t2, "other + delta (pm-mined map)")
    assert shuffled["sets"]["forget"]["RL"] > pm["sets"]["forget"]["RL"] + 0.2


def test_instruction_delta_makes_base_models_answer_about_unseen_authors(demo_result):
    res, _ = demo_result
    t1 = res["table1"]
    for key, label in (("template", "template + delta"), ("large", "large + delta"),
                       ("other", "other + delta (pm-mined map)")):
        assert _row(t1, label)["rouge_l_recall"] > _row(t1, key)["rouge_l_recall"] + 0.05, key
        assert _row(t1, label)["ref_loglik"] > _row(t1, key)["ref_loglik"], key
    assert _row(t1, "other + delta (pm-mined map)")["ref_loglik"] > _row(t1, "other + delta (shuffled map)")["ref_loglik"]


def test_baselines_sit_beside_cmc(demo_result):
    """Direct fine-tunes (Table 1's upper bound; Table 2's direct unlearning) and proxy-tuning of `large`."""
    res, out = demo_result
    t1, t2 = res["table1"], res["table2"]
    for key in ("template", "large", "other"):
        ft = _row(t1, f"{key} fine-tuned (upper bound)")
        assert ft["rouge_l_recall"] > _row(t1, key)["rouge_l_recall"] + 0.1, key
        un = _row(t2, f"{key} unlearned directly (grad. diff.)")
        assert un["sets"]["forget"]["RL"] < _row(t2, key)["sets"]["forget"]["RL"], key
    proxy = _row(t1, "large + proxy-tuning (template pair)")
    assert proxy["ref_loglik"] > _row(t1, "large")["ref_loglik"]
    assert _row(t2, "large + proxy-tuning (template pair)")["sets"]["forget"]["RL"] < _row(t2, "large")["sets"]["forget"]["RL"]
    assert "upper bound" in (out / "report.md").read_text()


def test_demo_writes_its_artifacts(demo_result):
    res, out = demo_result
    assert (out / "report.md").read_text().startswith("# cmc demo")
    assert {p.name for p in (out / "tokenmaps").iterdir()} == {
        "template__other.pm-mined.safetensors", "template__other.exact-only.safetensors",
        "template__other.shuffled.safetensors"}
    assert json.loads((out / "deltas" / "unlearn" / "cmc.json").read_text())["task"] == "unlearn"
    assert res["seconds"]["deltas"] > 0


@pytest.mark.parametrize("args, msg", [(["--alpha", "nan"], "--alpha must be a finite number"),
                                       (["--instruct-alpha", "inf"], "--instruct-alpha must be a finite number"),
                                       (["--eval-limit", "0"], "--eval-limit must be positive"),
                                       (["--size", "huge"], "--size must be one of full, reduced")])
def test_demo_rejects_bad_options_before_building(cli, workdir, args, msg):
    r = cli("demo", *args)
    assert r.exit_code == 1 and msg in r.output and "building" not in r.output
