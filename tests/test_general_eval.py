"""`cmc eval general` and the Brown corpus: perplexity against a from-scratch computation, KL and the paired
difference, the conversion of the tagged corpus, the errors."""

import json
import math

import pytest
import torch
import torch.nn.functional as F

from cmc_cli.fetch import brown_sentences
from cmc_cli.zoo.models import make_random_delta, make_tiny_llama

TEXT = ("The harbour town had red boats and blue nets by the sea.\n\n"
        "Sailors wrote novels about the rope, the lighthouse and the fishermen.\n\n"
        "Short one.\n\n"
        "Authors born in 1932 wrote about the harbour and the town of Paris every year.\n")


def test_brown_tags_are_stripped_and_punctuation_attached():
    tagged = ("\n\n\tThe/at jury/nn said/vbd ``/`` no/at evidence/nn ''/'' ,/, it/pps was/bedz n't/* found/vbn ./.\n\n"
              "\tOK/uh ./.\n")
    assert brown_sentences(tagged) == ['The jury said "no evidence", it wasn\'t found.']


@pytest.fixture(scope="module")
def world(tmp_path_factory, tiny_tokenizers):
    root = tmp_path_factory.mktemp("general")
    (root / "t.txt").write_text(TEXT)
    return {"root": root, "user": make_tiny_llama(tiny_tokenizers["bl"], root / "user", hidden=48, seed=3),
            "delta": make_random_delta(tiny_tokenizers["spm"], root / "delta", prompt_format="Q: {prompt}\nA:", seed=5)}


def test_perplexity_equals_a_from_scratch_computation(world, cli, tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    r = cli("-q", "eval", "general", "-u", str(world["user"]), "-d", f"{world['delta']}:1.5", "--text",
            str(world["root"] / "t.txt"), "-o", str(tmp_path / "o"))
    assert r.exit_code == 0, r.output
    res = json.loads((tmp_path / "o" / "results.json").read_text())
    alone, with_delta = res["rows"]
    assert alone["texts"] == 3  # "Short one." has fewer than 4 + 3 words
    tok = AutoTokenizer.from_pretrained(str(world["user"]))
    model = AutoModelForCausalLM.from_pretrained(str(world["user"]))
    total, count, per_text = 0.0, 0, []
    for t in [p for p in TEXT.split("\n\n") if len(p.split()) >= 7]:
        head = " ".join(t.split(" ")[:4])
        bos = tok("a")["input_ids"][:1] if tok("a")["input_ids"][0] == tok.bos_token_id else []
        h_ids = bos + tok(head, add_special_tokens=False)["input_ids"]
        ids = bos + tok(t.strip(), add_special_tokens=False)["input_ids"]
        assert ids[:len(h_ids)] == h_ids
        with torch.no_grad():
            lp = F.log_softmax(model(input_ids=torch.tensor([ids])).logits[0].float(), -1)
        nll = [-lp[i - 1, ids[i]].item() for i in range(len(h_ids), len(ids))]
        per_text.append(sum(nll) / len(nll))
        total, count = total + sum(nll), count + len(nll)
    assert alone["tokens"] == count
    assert alone["nll"] == pytest.approx(total / count, abs=1e-4) and alone["ppl"] == pytest.approx(math.exp(total / count), rel=1e-4)
    assert alone["per_text_nll"] == pytest.approx(per_text, abs=1e-4)
    # with the delta: a real change, its KL positive, the paired difference the mean of per-text differences
    assert with_delta["kl"] > 1e-4 and alone["kl"] == 0.0
    diffs = [a - b for a, b in zip(with_delta["per_text_nll"], alone["per_text_nll"])]
    assert with_delta["paired_nll_vs_alone"][0] == pytest.approx(sum(diffs) / len(diffs), abs=1e-6)
    assert with_delta["deltas"][0]["alpha"] == 1.5 and "NLL / token" in (tmp_path / "o" / "report.md").read_text()


def test_a_zero_strength_delta_changes_nothing_on_general_text(world, cli, tmp_path):
    r = cli("-q", "eval", "general", "-u", str(world["user"]), "-d", f"{world['delta']}:0", "--text",
            str(world["root"] / "t.txt"), "-o", str(tmp_path / "o"))
    assert r.exit_code == 0, r.output
    alone, with_delta = json.loads((tmp_path / "o" / "results.json").read_text())["rows"]
    assert with_delta["nll"] == pytest.approx(alone["nll"], abs=1e-6) and with_delta["kl"] == pytest.approx(0.0, abs=1e-7)


def test_without_text_or_fetched_corpus_it_says_how_to_get_one(world, cli, tmp_path, monkeypatch):
    monkeypatch.setenv("CMC_CACHE", str(tmp_path / "empty-cache"))
    r = cli("eval", "general", "-u", str(world["user"]))
    assert r.exit_code == 1 and "cmc fetch text" in r.output
    r = cli("eval", "general", "-u", str(world["user"]), "--text", str(tmp_path / "none.txt"))
    assert r.exit_code == 1 and "--text" in r.output and "no such file" in r.output
    r = cli("eval", "general", "-u", str(world["user"]), "--text", str(world["root"] / "t.txt"), "--words", "0")
    assert r.exit_code == 1 and "--words must be" in r.output


@pytest.mark.real
@pytest.mark.slow
def test_fetch_text_brings_the_brown_corpus_checksummed():
    from cmc_cli.fetch import fetch_texts

    path = fetch_texts(["brown"])["brown"]
    info = json.loads((path.parent / "cmc-asset.json").read_text())
    assert info["samples"] == 500 and info["sentences"] > 50_000
    first = path.read_text(encoding="utf-8").split("\n\n")[0]
    assert first.startswith("The Fulton County Grand Jury said Friday an investigation of Atlanta's recent primary")
    assert "/" not in first


def test_no_alone_keeps_the_paired_column_from_the_same_pass(world, cli, tmp_path):
    """Under --no-alone the user alone's per-text NLL comes from the same forward pass (deltas at strength 0):
    the paired column equals the one a run with the alone row computes; several strengths, one row each."""
    base = ["-q", "eval", "general", "-u", str(world["user"]), "-d", str(world["delta"]), "--alpha", "1.5,3",
            "--text", str(world["root"] / "t.txt")]
    assert cli(*base, "-o", str(tmp_path / "a")).exit_code == 0
    assert cli(*base, "--no-alone", "-o", str(tmp_path / "b")).exit_code == 0
    with_alone = json.loads((tmp_path / "a" / "results.json").read_text())["rows"]
    without = json.loads((tmp_path / "b" / "results.json").read_text())["rows"]
    assert [r["label"] for r in with_alone] == ["user", "user + delta@1.5", "user + delta@3"]
    assert [r["label"] for r in without] == ["user + delta@1.5", "user + delta@3"]
    for a, b in zip(with_alone[1:], without):
        assert b["paired_nll_vs_alone"] == pytest.approx(a["paired_nll_vs_alone"], abs=1e-5)
        assert b["per_text_nll"] == pytest.approx(a["per_text_nll"], abs=1e-6)
