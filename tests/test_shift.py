"""Logit-shift similarity: Sinkhorn by hand, identical vs unrelated shifts, the command end to end."""

import json

import pytest
import torch

from cmc_cli.engine.models import load_lm
from cmc_cli.eval.shift import Family, compare_families, compare_shifts, sinkhorn_divergence, sinkhorn_ot
from cmc_cli.tokenmaps.tokenmap import TokenMap
from cmc_cli.zoo.models import make_tiny_llama


def test_sinkhorn_by_hand():
    cost = torch.tensor([[0.0, 1.0], [1.0, 0.0]], dtype=torch.float64)
    a = torch.tensor([1.0, 0.0], dtype=torch.float64)
    b = torch.tensor([0.0, 1.0], dtype=torch.float64)
    assert float(sinkhorn_ot(a, b, cost, eps=0.01)) == pytest.approx(1.0, abs=1e-3)  # all mass moves at cost 1
    assert sinkhorn_divergence(a, b, cost, eps=0.01) == pytest.approx(1.0, abs=1e-2)
    half = torch.tensor([0.5, 0.5], dtype=torch.float64)
    assert sinkhorn_divergence(a, half, cost, eps=0.01) == pytest.approx(0.5, abs=2e-2)
    assert abs(sinkhorn_divergence(half, half, cost)) < 1e-9


def test_identical_shifts_are_closest():
    torch.manual_seed(0)
    s = torch.randn(500)
    emb = torch.randn(500, 16)
    same = compare_shifts(s, s.clone(), emb)
    other = compare_shifts(s, torch.randn(500), emb)
    assert same["cosine"] == pytest.approx(1.0) and same["spearman"] == pytest.approx(1.0)
    assert abs(same["sinkhorn"]) < 1e-8
    assert other["sinkhorn"] > 0.01 and other["cosine"] < 0.5


@pytest.fixture(scope="module")
def fams(tmp_path_factory, tiny_tokenizers):
    root = tmp_path_factory.mktemp("shift")
    m = {k: make_tiny_llama(tiny_tokenizers[t], root / k, hidden=32, seed=s)
         for k, t, s in (("a_base", "spm", 1), ("a_tuned", "spm", 2), ("b_base", "bl", 3), ("b_tuned", "bl", 4))}
    texts = root / "texts.jsonl"
    texts.write_text("".join(json.dumps({"text": t}) + "\n" for t in
                             ["The harbour town and its sailors wrote novels.", "Box 2 is blue and box 3 is red."]))
    return root, m, texts


def test_a_family_compared_with_itself_is_identical_and_beats_the_control(fams):
    root, m, texts = fams
    fa = Family("a", load_lm(str(m["a_base"])), load_lm(str(m["a_tuned"])))
    from cmc_cli.eval.shift import load_texts

    res = compare_families(fa, fa, load_texts(texts), None)
    assert res.positions > 10
    assert res.metrics["cosine"][0] == pytest.approx(1.0)
    assert abs(res.metrics["sinkhorn"][0]) < 1e-8
    assert res.control["cosine"][0] < 0.9
    fb = Family("b", load_lm(str(m["b_base"])), load_lm(str(m["b_tuned"])))
    tm = TokenMap.build(fa.base.vocab, fb.base.vocab)
    cross = compare_families(fa, fb, load_texts(texts), tm.index_tensor(), top_k=5)
    ref_positions, ref_cos = _reference_cross_cosine(fa, fb, load_texts(texts), tm.index_tensor(), top_k=5)
    assert cross.positions == ref_positions > 5
    assert cross.metrics["cosine"][0] == pytest.approx(ref_cos, abs=1e-6)


def _reference_cross_cosine(fa, fb, texts, index, top_k):
    """From scratch, one position at a time: the shift log p_tuned - log p_base of each family at every
    character where both tokenizations start a token, B's tokens mapped to A's ids through the token map;
    cosine on the union of both shifts' top-k (by magnitude) mapped tokens; the mean over positions."""
    import math

    def shifts(fam, text):
        enc = fam.base.tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
        ids = fam.base.bos + list(enc["input_ids"])
        out = {}
        for k, (start, _) in enumerate(enc["offset_mapping"]):
            at = len(fam.base.bos) - 1 + k  # the position that predicts text token k
            if at < 0 or start in out:
                continue
            x = torch.tensor([ids[:at + 1]])
            with torch.no_grad():
                lt = torch.log_softmax(fam.tuned.model(input_ids=x).logits[0, -1].double(), -1)
                lb = torch.log_softmax(fam.base.model(input_ids=x).logits[0, -1].double(), -1)
            out[start] = (lt - lb).tolist()
        return out

    mapped = [(b, int(a)) for b, a in enumerate(index.tolist()) if a >= 0]
    cosines = []
    for text in texts:
        sa, sb = shifts(fa, text), shifts(fb, text)
        for c in sorted(set(sa) & set(sb)):
            x = [sa[c][a] for _, a in mapped]
            y = [sb[c][b] for b, _ in mapped]
            top = lambda v: sorted(range(len(v)), key=lambda i: -abs(v[i]))[:top_k]  # noqa: E731
            u = sorted(set(top(x)) | set(top(y)))
            dot = sum(x[i] * y[i] for i in u)
            cosines.append(dot / (math.sqrt(sum(x[i] ** 2 for i in u)) * math.sqrt(sum(y[i] ** 2 for i in u))))
    return len(cosines), sum(cosines) / len(cosines)


def test_cli_eval_shift(fams, workdir, cli):
    root, m, texts = fams
    r = cli("eval", "shift", "--base", m["a_base"], "--tuned", m["a_tuned"], "--base", m["b_base"], "--tuned",
            m["b_tuned"], "--texts", texts, "-o", "sh")
    assert r.exit_code == 0, r.output
    res = json.loads((workdir / "sh" / "results.json").read_text())
    assert len(res["comparisons"]) == 1
    c = res["comparisons"][0]
    assert set(c["metrics"]) == {"cosine", "spearman", "sinkhorn"} and c["positions"] > 0
    png = list((workdir / "sh").glob("*.png"))
    assert png and png[0].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    r = cli("eval", "shift", "--base", m["a_base"], "--texts", texts)
    assert r.exit_code == 1 and "--tuned" in r.output and len(r.output.strip().splitlines()) == 1
