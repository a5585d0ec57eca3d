"""The look-ahead of a pm-lookahead map (engine/lookahead.py) against a from-scratch recompute: every decode
step's scores equal the hand-assembled formula, with each candidate's continuation computed by running the
delta from scratch on context + d + r_1..r_{j-1}; the neutral baseline; the scorer and the logits processor."""

import pytest
import torch
import torch.nn.functional as F

from cmc_cli.engine.combine import continuation_baseline, lookahead_extra
from cmc_cli.engine.decode import Decoder
from cmc_cli.engine.models import load_delta, load_lm
from cmc_cli.engine.sampling import GenerationConfig
from cmc_cli.engine.lookahead import Lookahead
from cmc_cli.errors import TokenMapError
from cmc_cli.refs import resolve
from cmc_cli.engine.maps import load_vocab
from cmc_cli.tokenmaps.strategies import EXACT, PREFIX
from cmc_cli.tokenmaps.tokenmap import TokenMap
from cmc_cli.zoo.models import make_random_delta, make_tiny_llama

PROMPT, FMT = "Tell me about the harbour", "Q: {prompt}\nA:"


@pytest.fixture(scope="module")
def setup(tmp_path_factory, tiny_tokenizers):
    root = tmp_path_factory.mktemp("look")
    user = load_lm(str(make_tiny_llama(tiny_tokenizers["bl"], root / "u", hidden=32, seed=3)))
    delta_dir = make_random_delta(tiny_tokenizers["spm"], root / "d", prompt_format=FMT, seed=5)
    d_vocab = load_vocab(resolve(str(delta_dir)))
    return {"user": user, "delta_dir": delta_dir, "d_vocab": d_vocab, "root": root}


def _scratch_logits(delta, ids: list[int]) -> torch.Tensor:
    """The delta's logits after `ids`, one plain forward from nothing."""
    return delta.lm.model(input_ids=torch.tensor([ids])).logits[0, -1].float()


def _context_ids(delta, text: str) -> list[int]:
    tok = delta.lm.tokenizer
    return delta.lm.bos + list(tok(FMT.replace("{prompt}", PROMPT) + text, add_special_tokens=False)["input_ids"])


@pytest.mark.parametrize("k", [4, 64])
def test_every_step_equals_a_from_scratch_recompute(setup, k):
    user = setup["user"]
    tm = TokenMap.build(setup["d_vocab"], user.vocab, strategy="pm-lookahead", lookahead_k=k)
    delta = load_delta(setup["delta_dir"], user, 0.7, [tm])
    assert delta.lookahead is not None and delta.lookahead.k == k
    dec = Decoder(user, [delta], user_format="raw")
    dec.trace = []
    dec.generate([PROMPT], GenerationConfig(max_new_tokens=6))
    index, kind = torch.from_numpy(tm.index), torch.from_numpy(tm.kind)
    n_two = n_more = 0
    with torch.inference_mode():
        for st in dec.trace:
            ctx = _context_ids(delta, st["texts"][0])  # the generated text so far
            z0 = _scratch_logits(delta, ctx)
            assert torch.allclose(z0, st["delta"][0][0], atol=1e-4)
            z0 = z0 - z0.double().mean().float()  # centred on its mean (combine.centre_delta)
            mapped = z0[index.clamp(min=0)]
            value = torch.where(kind == PREFIX, torch.minimum(mapped, z0.median()), mapped)
            top = st["user"][0][:index.shape[0]].topk(min(k, index.shape[0])).indices.tolist()
            for u in top:
                if kind[u] != PREFIX:
                    continue
                pieces = delta.lookahead.pieces(u)
                surf = "".join(setup["d_vocab"].surfaces[p] for p in pieces)
                assert surf == user.vocab.surfaces[u] and pieces[0] == tm.index[u]
                total, seq = z0[pieces[0]], ctx + [pieces[0]]
                for r in pieces[1:]:  # each continuation piece: the delta run from scratch after the ones before
                    z = _scratch_logits(delta, seq).double()
                    p = z.softmax(-1)
                    total = total + (z[r] - torch.log((p * z.exp()).sum())).float()  # log E_softmax(z)[e^z]
                    seq = seq + [r]
                value[u] = total
                n_two += len(pieces) == 2
                n_more += len(pieces) > 2
            value = value.masked_fill(index < 0, 0.0)
            want = F.log_softmax(st["user"][0].float(), -1)
            want[:value.shape[0]] += 0.7 * value
            assert torch.allclose(st["final"][0], want, atol=1e-4)
    assert n_two > 0  # user tokens made of two delta tokens were among the candidates
    assert dec.stats["lookahead_tokens"][0] > 0


def test_the_continuation_baseline(setup):
    """The baseline log E_{softmax(z)}[e^z]: a position where the delta is flat gives every piece 0, as an
    unmapped token gets; a piece the delta passes over while it pushes another loses; hand-computed values."""
    z = torch.zeros(3, 50)
    z[1, 7] = 4.0  # position 1: the delta pushes token 7
    z[2] = 3.0  # position 2: flat at another level
    shift = lookahead_extra(z, torch.tensor([1, 1, 7]), torch.tensor([0, 1, 2]), 3)
    e4 = torch.tensor(4.0).exp()
    c1 = torch.log((e4 * e4 + 49) / (e4 + 49))  # sum softmax * e^z = (e^8 + 49) / (e^4 + 49)
    assert shift[0] == 0.0 and shift[2].abs() < 1e-6  # flat: 0 whatever the level
    assert shift[1] == pytest.approx(float(-c1), abs=1e-5) and shift[1] < -3  # passed over while 7 is pushed
    assert continuation_baseline(z)[1, 0] == pytest.approx(float(c1), abs=1e-5)
    # a per-position constant (log-softmax of the delta, mode log-softmax-both) leaves the shifts unchanged
    moved = z + torch.tensor([[1.0], [-4.0], [9.0]])
    assert torch.allclose(lookahead_extra(moved, torch.tensor([1, 1, 7]), torch.tensor([0, 1, 2]), 3), shift, atol=1e-5)
    two = lookahead_extra(z[:2], torch.tensor([1, 7]), torch.tensor([0, 0]), 1)  # two pieces of one candidate add up
    assert two[0] == pytest.approx(float(0.0 + (4.0 - c1)), abs=1e-5)


def test_a_zero_head_delta_leaves_the_user_alone(setup, tmp_path):
    """Through the whole decoder: a fresh delta (zero output layer) adds nothing with the look-ahead either."""
    from transformers import AutoModelForCausalLM

    user = setup["user"]
    d = make_random_delta(setup["root"] / "d", tmp_path / "z", prompt_format=FMT, seed=5)
    m = AutoModelForCausalLM.from_pretrained(str(d))
    torch.nn.init.zeros_(m.get_output_embeddings().weight)
    m.save_pretrained(str(d))
    tm = TokenMap.build(setup["d_vocab"], user.vocab, strategy="pm-lookahead", lookahead_k=64)
    dec = Decoder(user, [load_delta(d, user, 2.0, [tm])], user_format="raw")
    dec.trace = []
    dec.generate([PROMPT], GenerationConfig(max_new_tokens=4))
    for st in dec.trace:
        assert torch.allclose(st["final"][0], F.log_softmax(st["user"][0].float(), -1), atol=1e-6)


def test_scorer_and_processor_use_the_same_step(setup):
    from cmc_cli.engine.processor import CMCLogitsProcessor
    from cmc_cli.engine.score import Scorer

    user = setup["user"]
    tm = TokenMap.build(setup["d_vocab"], user.vocab, strategy="pm-lookahead", lookahead_k=16)
    delta = load_delta(setup["delta_dir"], user, 0.7, [tm])
    dec = Decoder(user, [delta], user_format="raw")
    answer = "town and its sailors, please."
    scored = Scorer(dec).score([PROMPT], [answer])[0]
    dec.trace = []
    dec.generate([PROMPT], GenerationConfig(max_new_tokens=len(scored.answer_ids) + 1), force=[scored.answer_ids])
    forced = [float(F.log_softmax(st["final"][0], -1)[t]) for st, t in zip(dec.trace, scored.answer_ids)]
    assert len(forced) == len(scored.answer_ids) > 3
    assert scored.token_logprobs == pytest.approx(forced, abs=1e-5)
    assert scored.delta_extra_tokens[0] > 0
    # HF generate with the processor, greedy, equals cmc's decoder
    mine = dec.generate([PROMPT], GenerationConfig(max_new_tokens=6))[0]
    ids = torch.tensor([dec.user_prompt_ids(PROMPT)])
    proc = CMCLogitsProcessor([delta], user, [PROMPT])
    out = user.model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), logits_processor=[proc],
                              do_sample=False, max_new_tokens=6, pad_token_id=user.pad_id)
    got = out[0, ids.shape[1]:].tolist()
    assert got[:len(mine.token_ids)] == mine.token_ids


def test_map_records_the_rule_and_k_and_refuses_bad_ones(setup, tmp_path):
    user = setup["user"]
    tm = TokenMap.build(setup["d_vocab"], user.vocab, strategy="pm-lookahead", lookahead_k=8)
    p = tm.save(tmp_path / "m.safetensors")
    back = TokenMap.load(p)
    assert back.meta["prefix_rule"] == "lookahead" and back.lookahead_k == 8
    assert (back.index == TokenMap.build(setup["d_vocab"], user.vocab, strategy="pm-mined").index).all()
    assert back.shuffled(1).meta.get("lookahead_k") is None
    with pytest.raises(TokenMapError, match="lookahead-k"):
        TokenMap.build(setup["d_vocab"], user.vocab, strategy="pm-lookahead", lookahead_k=0)
    with pytest.raises(ValueError):
        Lookahead(tm, setup["d_vocab"], user.vocab, 0)
    assert (tm.kind == EXACT).any() and (tm.kind == PREFIX).any()


def test_cli_map_vocab_lookahead_k(cli, workdir, tiny_tokenizers):
    r = cli("map-vocab", str(tiny_tokenizers["spm"]), str(tiny_tokenizers["bl"]), "--strategy", "pm-lookahead",
            "--lookahead-k", "32", "-o", "m.safetensors")
    assert r.exit_code == 0, r.output
    assert TokenMap.load(workdir / "m.safetensors").lookahead_k == 32
    r = cli("map-vocab", str(tiny_tokenizers["spm"]), str(tiny_tokenizers["bl"]), "--lookahead-k", "32", "-o", "n.safetensors")
    assert r.exit_code != 0 and "--lookahead-k applies to --strategy pm-lookahead only" in r.output
    r = cli("map-vocab", str(tiny_tokenizers["spm"]), str(tiny_tokenizers["bl"]), "--strategy", "pm-lookahead",
            "--lookahead-k", "0", "-o", "n.safetensors")
    assert r.exit_code != 0 and "--lookahead-k must be a whole number >= 1" in r.output
    assert not (workdir / "n.safetensors").exists()
