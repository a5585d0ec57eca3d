"""The model world's data: deterministic, complete, TOFU- and Alpaca-shaped."""

import json

from cmc_cli.data.instruct import load_instruct
from cmc_cli.data.tofu import load_tofu_eval
from cmc_cli.zoo.world import REDUCED, WorldSpec, make_world, write_world_data


def test_same_seed_same_files_other_seed_other_world(tmp_path):
    a = write_world_data(REDUCED, tmp_path / "a")
    b = write_world_data(REDUCED, tmp_path / "b")
    assert a == b
    c = write_world_data(WorldSpec(**{**REDUCED.__dict__, "seed": 1}), tmp_path / "c")
    assert c["qa_all.jsonl"] != a["qa_all.jsonl"]
    manifest = json.loads((tmp_path / "a" / "world.json").read_text())
    assert manifest["files"] == a and manifest["spec"]["n_authors"] == 20


def test_full_world_has_what_the_benchmark_needs():
    w = make_world(WorldSpec())
    assert len(w["authors"]) == 100 and all(len(a) - 1 >= 10 for a in w["authors"])  # name + 10 facts
    assert len({a["name"] for a in w["authors"]}) == 100
    assert len(w["qa_all"]) == 1000
    for r in w["qa_all"]:
        assert len(r["perturbed_answer"]) >= 3 and r["answer"] not in r["perturbed_answer"]
        assert r["paraphrased_answer"] != r["answer"]
    # nested forget splits of 1 %, 5 %, 10 % of the authors, each with its retain complement
    for pct in (1, 5, 10):
        forget, retain = w[f"forget{pct:02d}"], w[f"retain{100 - pct:02d}"]
        assert len({r["author"] for r in forget}) == pct
        assert not {r["author"] for r in forget} & {r["author"] for r in retain}
        assert len(forget) + len(retain) == 1000
    assert {r["author"] for r in w["forget01"]} <= {r["author"] for r in w["forget05"]} <= {r["author"] for r in w["forget10"]}
    # every QA fact is stated in its author's biography (base models can learn it from prose)
    bios = " ".join(b["text"] for b in w["biographies"])
    for a in w["authors"]:
        for k, v in a.items():
            assert v in bios
    # instruction data: authors seen in QA form for training never appear in the evaluation prompts
    assert len(w["instruct_train"]) == len(w["instruct_eval"]) == 500
    assert not {r["author"] for r in w["instruct_train"]} & {r["author"] for r in w["instruct_eval"]}
    assert len(w["real_authors"]) == 20 and len(w["world_facts"]) == 30


def test_files_load_with_the_project_loaders(tmp_path):
    write_world_data(REDUCED, tmp_path)
    assert len(load_tofu_eval(tmp_path / "forget10.jsonl", "forget")) == 20
    assert len(load_tofu_eval(tmp_path / "retain90.jsonl", "retain")) == 180
    assert load_tofu_eval(tmp_path / "world_facts.jsonl", "world_facts")[0].perturbed
    assert len(load_instruct(tmp_path / "instruct_train.jsonl")) == 100
