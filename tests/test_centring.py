"""A flat delta (its logits one value per position, any value) is an exact no-op on every model: through
every kind of token map, in every combine mode, in every decode path (generate, scoring, the HF logits
processor, serving). And a delta's per-position level never moves probability between mapped and
unmapped user tokens (combine.centre_delta)."""

import math

import pytest
import torch
import torch.nn.functional as F

from cmc_cli.config import COMBINE_MODES
from cmc_cli.engine.combine import centre_delta, decode_scores, silence_penalty
from cmc_cli.engine.decode import Decoder
from cmc_cli.engine.maps import load_vocab
from cmc_cli.engine.models import load_delta, load_lm
from cmc_cli.engine.sampling import GenerationConfig
from cmc_cli.engine.score import Scorer
from cmc_cli.refs import resolve
from cmc_cli.tokenmaps.tokenmap import TokenMap
from cmc_cli.zoo.models import make_random_delta, make_tiny_llama

PROMPTS = ["Tell me about the harbour", "Hi", "Where were the sailors born, and what did they write?"]
MAPS = ["exact-ext", "pm-mined", "pm-suppress", "pm-lookahead", "shuffled"]


def test_centring_by_hand_and_every_mode_the_same_across_vocabularies():
    d = torch.tensor([[1.0, 2.0, 6.0], [0.0, 0.0, 3.0]])  # (2, V_delta=3); means 3 and 1
    assert centre_delta(d).tolist() == [[-2.0, -1.0, 3.0], [-1.0, -1.0, 2.0]]
    assert silence_penalty(d).item() == pytest.approx(4 + 1 + 9 + 1 + 1 + 4)
    user = torch.tensor([[0.5, 1.5, -1.0, 2.0]])
    index = torch.tensor([2, -1, 0, 1])  # user token 1 unmapped
    got = decode_scores(user, [(0.5, d[:1], index)])
    lse = math.log(sum(math.exp(x) for x in user[0].tolist()))
    want = [0.5 - lse + 0.5 * 3.0, 1.5 - lse, -1.0 - lse + 0.5 * -2.0, 2.0 - lse + 0.5 * -1.0]
    assert got[0].tolist() == pytest.approx(want, abs=1e-6)
    torch.manual_seed(0)
    user, delta = torch.randn(4, 9) * 3, torch.randn(4, 6) * 2
    index = torch.tensor([0, 5, -1, 3, -1, 2, 2, 1, -1])
    dist = [F.log_softmax(decode_scores(user, [(0.7, delta, index)], mode=m), -1) for m in COMBINE_MODES]
    for other in dist[1:]:
        assert torch.allclose(dist[0], other, atol=1e-5)


@pytest.mark.parametrize("mode", COMBINE_MODES)
def test_a_per_position_constant_changes_nothing_whatever_the_map(mode):
    torch.manual_seed(1)
    user = torch.randn(5, 11) * 2
    level = torch.randn(5, 1) * 40  # a different level at each position, far from 0
    flat = level.expand(5, 7).clone()
    index = torch.tensor([0, -1, 6, 6, -1, 3, 2, -1, 1, 5, 4])
    cap = torch.tensor([False, False, True, False, False, True, False, False, True, False, False])
    look = (torch.tensor([0, 3]), torch.tensor([2, 5]), torch.zeros(2))  # flat continuations add 0 each
    alone = F.log_softmax(user, -1)
    for term in [(1.0, flat, index), (2.5, flat, index, cap), (1.0, flat, index, None, look), (1.0, flat[:, :1].expand(5, 11), None)]:
        got = F.log_softmax(decode_scores(user, [term], mode=mode), -1)
        assert torch.allclose(got, alone, atol=1e-5)
    # the same delta moved by a per-position constant decodes the same: the level is not a free knob any more
    other = torch.randn(5, 7)
    a = decode_scores(user, [(1.3, other, index)], mode=mode)
    b = decode_scores(user, [(1.3, other + level, index)], mode=mode)
    assert torch.allclose(F.log_softmax(a, -1), F.log_softmax(b, -1), atol=1e-4)


@pytest.fixture(scope="module")
def world(tmp_path_factory, tiny_tokenizers):
    root = tmp_path_factory.mktemp("flat")
    out = {"user": load_lm(str(make_tiny_llama(tiny_tokenizers["bl"], root / "user", hidden=48, seed=3))), "root": root}
    for mode in COMBINE_MODES:
        out[mode] = make_random_delta(tiny_tokenizers["spm"], root / f"flat-{mode}", prompt_format="Q: {prompt}\nA:",
                                      seed=5, head_std=3.0, flat=True, combine=mode)
    out["d_vocab"] = load_vocab(resolve(str(out[COMBINE_MODES[0]])))
    return out


def _map(world, strategy: str) -> TokenMap:
    return TokenMap.build(world["d_vocab"], world["user"].vocab, strategy=strategy, seed=1)


@pytest.mark.parametrize("strategy", MAPS)
@pytest.mark.parametrize("mode", COMBINE_MODES)
def test_generate_with_a_flat_delta_is_the_user_alone_at_every_step(world, strategy, mode):
    user = world["user"]
    delta = load_delta(world[mode], user, 2.0, [_map(world, strategy)])
    assert delta.combine == mode
    dec = Decoder(user, [delta], user_format="raw")
    dec.trace = []
    got = dec.generate(PROMPTS, GenerationConfig(max_new_tokens=6))
    alone = Decoder(user, [], user_format="raw").generate(PROMPTS, GenerationConfig(max_new_tokens=6))
    assert [g.token_ids for g in got] == [a.token_ids for a in alone]
    z = dec.trace[0]["delta"][0]
    assert (z.max(-1).values - z.min(-1).values).max() < 1e-3 and z.abs().max() > 0.5  # flat, not zero
    for st in dec.trace:
        want = F.log_softmax(st["user"].float(), -1)
        assert torch.allclose(F.log_softmax(st["final"], -1), want, atol=1e-5)


@pytest.mark.parametrize("strategy", ["exact-ext", "pm-lookahead", "shuffled"])
def test_scoring_with_a_flat_delta_is_the_user_alone(world, strategy):
    user = world["user"]
    answers = [" the sailors wrote novels", " red boxes", " in 1932"]
    with_delta = Scorer(Decoder(user, [load_delta(world[COMBINE_MODES[0]], user, 3.0, [_map(world, strategy)])],
                                user_format="raw")).score(PROMPTS, answers)
    alone = Scorer(Decoder(user, [], user_format="raw")).score(PROMPTS, answers)
    for a, b in zip(with_delta, alone):
        assert a.token_logprobs == pytest.approx(b.token_logprobs, abs=1e-4) and len(a.token_logprobs) > 0


@pytest.mark.parametrize("mode", COMBINE_MODES)
def test_hf_logits_processor_with_a_flat_delta_is_the_user_alone(world, mode):
    from cmc_cli.engine.processor import CMCLogitsProcessor

    user = world["user"]
    d = load_delta(world[mode], user, 2.0, [_map(world, "exact-ext")])
    tok = user.tokenizer
    for prompt in PROMPTS:
        ids = torch.tensor([tok(prompt)["input_ids"]])
        kw = dict(attention_mask=torch.ones_like(ids), do_sample=False, max_new_tokens=6, pad_token_id=tok.eos_token_id,
                  output_scores=True, return_dict_in_generate=True)
        got = user.model.generate(ids, logits_processor=[CMCLogitsProcessor([d], user, [prompt])], **kw)
        alone = user.model.generate(ids, **kw)
        assert torch.equal(got.sequences, alone.sequences)
        for s, a in zip(got.scores, alone.scores):
            assert torch.allclose(F.log_softmax(s, -1), F.log_softmax(a, -1), atol=1e-5)


def test_serving_with_a_flat_delta_is_the_user_alone(world):
    from cmc_cli.config.serve import ServeConfig, ServedDelta
    from cmc_cli.serve.state import ServeState

    user = world["user"]
    cfg = ServeConfig(user=str(user.path), deltas=[ServedDelta("flat", str(world[COMBINE_MODES[0]]), 2.0)], default=["flat"])
    state = ServeState.load(cfg, user.width)
    tok = user.tokenizer
    outs = [[] for _ in PROMPTS]
    state.update(added=[(b, None, tok(p)["input_ids"], outs[b]) for b, p in enumerate(PROMPTS)])
    for _ in range(5):
        logits = []
        for b, p in enumerate(PROMPTS):
            with torch.no_grad():
                logits.append(user.model(input_ids=torch.tensor([tok(p)["input_ids"] + outs[b]])).logits[0, -1].float())
        logits = torch.stack(logits)
        scores = state.scores(logits)
        assert torch.allclose(F.log_softmax(scores, -1), F.log_softmax(logits, -1), atol=1e-5)
        for b, t in enumerate(logits.argmax(-1).tolist()):
            outs[b].append(t)
    assert state.live_state()["flat"] == len(PROMPTS)  # the delta really ran for every request
