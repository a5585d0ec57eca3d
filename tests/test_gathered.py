"""The gathered delta head (engine/heads.GatheredHead): the mapped ids' logits and the vocabulary mean only,
against the full head — the same term of the combined scores, the same decoding at every step."""

import pytest
import torch

from cmc_cli.engine import heads
from cmc_cli.engine.combine import delta_term
from cmc_cli.engine.decode import Decoder
from cmc_cli.engine.heads import GatheredHead
from cmc_cli.engine.models import load_delta, load_lm
from cmc_cli.engine.sampling import GenerationConfig
from cmc_cli.tokenmaps.tokenmap import TokenMap
from cmc_cli.zoo.models import make_random_delta, make_tiny_llama

PROMPTS = ["What colour is the box?", "Hi", "Tell me a story about a harbour town and its sailors, please."]


def test_gathered_columns_and_term_equal_the_full_heads():
    g = torch.Generator().manual_seed(0)
    w, h = torch.randn(50, 8, generator=g), torch.randn(3, 8, generator=g)
    index = torch.tensor([4, -1, 4, 17, 0, -1, 49, 23, 17, 8])  # repeats and unmapped user ids
    gh = GatheredHead(w, index)
    full = h @ w.T
    assert gh.used.tolist() == [0, 4, 8, 17, 23, 49]
    assert torch.allclose(gh(h), gh.of_full(full), atol=1e-5)
    assert torch.allclose(gh(h)[:, -1], full.mean(-1), atol=1e-5)  # the last column: the mean over all 50 ids
    for width in (10, 12):  # a user wider than its map: the extra ids get 0 either way
        want = delta_term(full, index, width)
        got = delta_term(gh(h), gh.index, width, None, None, True)
        assert torch.allclose(got, want, atol=1e-5)
        assert (got[:, [1, 5]] == 0).all()


@pytest.fixture(scope="module")
def pair(tmp_path_factory, tiny_tokenizers):
    root = tmp_path_factory.mktemp("gathered")
    user = load_lm(str(make_tiny_llama(tiny_tokenizers["bl"], root / "user", hidden=48, seed=3)))
    delta_dir = make_random_delta(tiny_tokenizers["spm"], root / "delta", prompt_format="Q: {prompt}\nA:", seed=5)
    return user, delta_dir


@pytest.mark.parametrize("cfg", [GenerationConfig(max_new_tokens=16),
                                 GenerationConfig(max_new_tokens=16, temperature=1.0, top_p=0.95, seed=3)],
                         ids=["greedy", "sampled"])
def test_decoding_through_the_gathered_head_equals_the_full_head_at_every_step(pair, cfg, monkeypatch):
    user, delta_dir = pair
    monkeypatch.setattr(heads, "GATHER_SHARE", 1.0)  # the tiny map uses most ids: gather anyway
    runs = {}
    for gather in (True, False):
        monkeypatch.setattr(heads, "GATHER", gather)
        dec = Decoder(user, [load_delta(delta_dir, user, 1.5)])
        dec.trace = []
        runs[gather] = ([g.text for g in dec.generate(PROMPTS, cfg)], dec.trace, dec.streams[0].gathered)
    (texts_g, trace_g, gh), (texts_f, trace_f, none) = runs[True], runs[False]
    assert gh is not None and none is None and gh.used.numel() < gh.full_width
    assert texts_g == texts_f and len(trace_g) == len(trace_f) > 10
    for a, b in zip(trace_g, trace_f):
        assert torch.equal(a["tokens"], b["tokens"])
        assert torch.allclose(a["final"], b["final"], atol=1e-4)


def test_gathered_only_where_decoding_reads_nothing_else(pair, tiny_tokenizers, monkeypatch):
    user, delta_dir = pair
    monkeypatch.setattr(heads, "GATHER_SHARE", 1.0)
    lm = load_lm(str(delta_dir))
    assert GatheredHead.for_delta(load_delta(delta_dir, user, 1.0)) is not None  # the default map
    capped = TokenMap.build(lm.vocab, user.vocab, strategy="pm-suppress")  # reads the median of all logits
    assert GatheredHead.for_delta(load_delta(delta_dir, user, 1.0, [capped])) is None
    monkeypatch.setattr(heads, "GATHER_SHARE", 0.01)  # a map that uses most of the ids: the full head
    assert GatheredHead.for_delta(load_delta(delta_dir, user, 1.0)) is None


def test_scoring_through_the_gathered_head_equals_the_full_head(pair, monkeypatch):
    """Scorer.profile (calibrate, eval) reads the delta as decoding does: log-probabilities, KL and hits per alpha."""
    from cmc_cli.engine.score import Scorer

    user, delta_dir = pair
    monkeypatch.setattr(heads, "GATHER_SHARE", 1.0)
    prompts, answers = PROMPTS, ["It is blue.", "Hello there!", "Once upon a time, boats."]
    out = {}
    for gather in (True, False):
        monkeypatch.setattr(heads, "GATHER", gather)
        sc = Scorer(Decoder(user, [load_delta(delta_dir, user, 1.0)]))
        assert (sc.gathered[0] is not None) == gather
        out[gather] = sc.profile(prompts, answers, [0.5, 2.0])
    for a in (0.5, 2.0):
        for g, f in zip(out[True][a], out[False][a]):
            assert g.top1 == f.top1
            assert g.token_logprobs == pytest.approx(f.token_logprobs, abs=1e-4)
            assert g.kl == pytest.approx(f.kl, abs=1e-4)
