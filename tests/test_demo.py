"""`cmc demo` on the reduced world, 2 seeds: the pipeline runs end to end and its effects point the way the
demo claims, so a regression in any stage (world, map, training, decoding, scoring) shows."""

import json
import re

import pytest


@pytest.fixture(scope="module")
def demo_result(reduced_zoo, tmp_path_factory):
    from typer.testing import CliRunner

    from cmc_cli.app import app
    from cmc_cli.commands._common import console

    out = tmp_path_factory.mktemp("demo") / "out"
    width, console.width = console.width, 80  # an 80-column terminal (COLUMNS=80)
    try:
        r = CliRunner().invoke(app, ["demo", "--size", "reduced", "--root", str(reduced_zoo.root), "-o", str(out),
                                     "--eval-limit", "20", "--seeds", "2", "--maps", "exact,pm-suppress",
                                     # the reduced world's short run (150 steps at batch 4) is too short for the
                                     # silence term (refusals 0.12 with it at alpha 2, docs/world.md): the plain
                                     # delta at a fixed strength keeps this test about the pipeline and the maps
                                     "--silence", "0", "--alpha", "2"])
    finally:
        console.width = width
    assert r.exit_code == 0, r.output
    assert "Unlearning (idk" in r.output and "Instruction tuning" in r.output
    return json.loads((out / "results.json").read_text()), out, r.stdout


def _row(rows, label):
    return next(r for r in rows if r["label"] == label)


def _mean(row, kind, metric):
    vals = [s[kind][metric] for s in row["per_seed"]]
    return sum(vals) / len(vals)


def test_idk_delta_makes_the_other_vocabulary_refuse_beyond_the_shuffled_control(demo_result):
    """The behaviour-level gap, over 2 seeds: through the default-candidate maps `other` refuses forget
    questions more than through the shuffled map (which cannot make it refuse), and answers retain and
    held-out questions about as well as alone."""
    res, _, _ = demo_result
    rows = res["unlearn"]
    assert all(len(_row(rows, f"other + delta ({m} map)")["per_seed"]) == 2 for m in ("pm-mined", "shuffled"))
    shuffled = _row(rows, "other + delta (shuffled map)")
    best = max(_mean(_row(rows, f"other + delta ({m} map)"), "forget", "refusal") for m in ("exact", "exact-ext", "pm-suppress"))
    assert best > _mean(shuffled, "forget", "refusal") + 0.2
    assert _mean(shuffled, "forget", "refusal") <= 0.2
    alone = _row(rows, "other")
    assert _mean(alone, "forget", "refusal") == 0.0
    # stated bounds for the reduced world's short run (150 steps, batch 4; docs/world.md): retain key accuracy
    # within 0.15 of the model alone, held-out within 0.5 (it falls to 0.60 from 1.00 here; on the full
    # world 0.96), and no refusals of retain or held-out questions. The world is built on the machine that runs
    # the test: on an AVX2-only x86-64 the exact map's retain accuracy is 0.85, on the bound.
    for m in ("exact", "exact-ext"):  # pm-suppress costs retain more (0.82 here, 0.92 on the full world)
        r = _row(rows, f"other + delta ({m} map)")
        for kind, bound in (("retain", 0.15), ("heldout", 0.5)):
            assert _mean(r, kind, "key_accuracy") >= _mean(alone, kind, "key_accuracy") - bound - 1e-9, (m, kind)
            assert _mean(r, kind, "refusal") <= 0.1, (m, kind)
    tmpl = _row(rows, "template + delta")
    assert _mean(tmpl, "forget", "refusal") > 0.4  # the template itself refuses


def test_instruction_delta_makes_base_models_answer_about_unseen_authors(demo_result):
    res, _, _ = demo_result
    rows = res["instruct"]
    for key, label in (("template", "template + delta"), ("large", "large + delta")):
        assert _mean(_row(rows, label), "retain", "RL") > _mean(_row(rows, key), "retain", "RL") + 0.05, key
    # through cmc's default map `other`'s answers beat the shuffled control's; the likelihood of the reference
    # answers is not asserted: the calibrated strength (the answer scan: 2 on the template, 1.5-2.5 elsewhere)
    # buys the answers above with it on the reduced world (template: P 0.033 alone -> 0.019 at alpha 2)
    other = _row(rows, "other + delta (exact-ext map)")
    assert _mean(other, "retain", "RL") > _mean(_row(rows, "other + delta (shuffled map)"), "retain", "RL") + 0.05


def test_baselines_sit_beside_cmc(demo_result):
    res, out, _ = demo_result
    t1 = res["instruct"]
    for key in ("template", "large", "other"):
        ft = _row(t1, f"{key} fine-tuned (upper bound)")
        assert len(ft["per_seed"]) == 1  # seed-independent rows are evaluated once
        assert _mean(ft, "retain", "RL") > _mean(_row(t1, key), "retain", "RL") + 0.1, key
    assert "upper bound" in (out / "report.md").read_text()


def test_demo_tables_fit_80_columns(demo_result):
    """No cut names ("templ…"), no cell wrapped: each model's figures stay on one line per table."""
    res, _, stdout = demo_result
    lines = stdout.splitlines()
    assert max(len(x) for x in lines) <= 80 and "…" not in stdout
    for r in res["unlearn"] + res["instruct"]:
        rows = [x for x in lines if x.startswith("│ " + r["label"] + " ")]
        assert len(rows) >= 2, r["label"]  # the whole label, on one line, in each part of its table
        if r["kind"] == "delta":
            assert re.search(r"\d\.\d\d", rows[0]), r["label"]  # and its figures beside it
    assert "(continued)" in stdout  # the 9 columns do not fit in 80: the rest follow, the labels repeated


def test_demo_writes_its_artifacts(demo_result):
    res, out, _ = demo_result
    report = (out / "report.md").read_text()
    assert report.startswith("# cmc demo") and res["headline"] in report and "refuse" in res["headline"]
    assert {p.name for p in (out / "tokenmaps").iterdir()} == {
        f"template__other.{m}.safetensors" for m in ("pm-mined", "exact", "exact-ext", "pm-suppress", "shuffled-s0", "shuffled-s1")}
    meta = json.loads((out / "deltas" / "unlearn-s1" / "cmc.json").read_text())
    assert meta["task"] == "unlearn" and meta["loss"] == "idk"
    assert res["seconds"]["deltas"] > 0


@pytest.mark.parametrize("args, msg", [(["--alpha", "nan"], "--alpha must be a finite number"),
                                       (["--instruct-alpha", "inf"], "--instruct-alpha must be a finite number"),
                                       (["--eval-limit", "0"], "--eval-limit must be positive"),
                                       (["--size", "huge"], "--size must be one of full, reduced"),
                                       (["--seeds", "0"], "--seeds must be positive"),
                                       (["--method", "forget"], "--method must be one of"),
                                       (["--maps", "fuzzy"], "--maps: unknown strategy 'fuzzy'")])
def test_demo_rejects_bad_options_before_building(cli, workdir, args, msg):
    r = cli("demo", *args)
    assert r.exit_code == 1 and msg in r.output and "building" not in r.output


def test_demo_reruns_into_its_own_output(demo_result, reduced_zoo):
    """A second `cmc demo` with the same -o (as the default <world>/demo is) replaces its own deltas."""
    from typer.testing import CliRunner

    from cmc_cli.app import app

    _, out, _ = demo_result
    r = CliRunner().invoke(app, ["demo", "--size", "reduced", "--root", str(reduced_zoo.root), "-o", str(out),
                                 "--eval-limit", "4", "--seeds", "1"])
    assert r.exit_code == 0, r.output
    assert json.loads((out / "results.json").read_text())["config"]["seeds"] == 1
