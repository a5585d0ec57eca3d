"""The decoder against independent computations: the user model alone, from-scratch recomputes of the
delta at every step, one-by-one runs, the hand-summed formula, and transformers' own generate."""

import json

import pytest
import torch
import torch.nn.functional as F

from cmc_cli.engine.decode import Decoder
from cmc_cli.engine.deltastate import DeltaStreams

from cmc_cli.engine.models import load_delta, load_lm

from cmc_cli.engine.sampling import GenerationConfig
from cmc_cli.engine.streams import ResyncLM
from cmc_cli.engine.textsync import DeltaText, GenText
from cmc_cli.errors import CmcError, ConfigError, TokenMapError
from cmc_cli.config import GenerateConfig
from cmc_cli.engine.generate import load_decoder
from cmc_cli.tokenmaps.strategies import UNMAPPED
from cmc_cli.tokenmaps.tokenmap import TokenMap
from cmc_cli.zoo.models import make_random_delta, make_tiny_llama

PROMPTS = ["What colour is the box?", "Hi", "Tell me a story about a harbour town and its sailors, please."]
FMT = "<|user|>\n{prompt}\n<|assistant|>\n"


@pytest.fixture(scope="module")
def world(tmp_path_factory, tiny_tokenizers):
    root = tmp_path_factory.mktemp("decode")
    return {
        "user_bl": make_tiny_llama(tiny_tokenizers["bl"], root / "user-bl", hidden=48, seed=3),
        "user_spm": make_tiny_llama(tiny_tokenizers["spm"], root / "user-spm", hidden=64, layers=3, seed=4),
        "delta": make_random_delta(tiny_tokenizers["spm"], root / "delta", prompt_format=FMT, seed=5),
        "delta_small": make_random_delta(tiny_tokenizers["spm_small"], root / "delta-small", prompt_format="Q: {prompt}\nA:",
                                         seed=6, head_std=0.5),
        "root": root,
    }


@pytest.fixture(scope="module")
def user_bl(world):
    return load_lm(str(world["user_bl"]))


def delta_reference(delta, prompt: str, text: str) -> torch.Tensor:
    """From scratch: tokenize bos + format(prompt) + text in one go, run the delta without a cache."""
    head = delta.prompt_format.replace("{prompt}", prompt)
    ids = delta.lm.bos + delta.lm.tokenizer(head + text, add_special_tokens=False)["input_ids"]
    with torch.no_grad():
        return delta.lm.model(input_ids=torch.tensor([ids])).logits[0, -1].float()


SAMPLED = GenerationConfig(max_new_tokens=24, temperature=1.0, top_p=0.95, seed=11)


@pytest.mark.parametrize("cfg,slack", [(GenerationConfig(max_new_tokens=16), 32), (SAMPLED, 0)],
                         ids=["greedy", "sampled-compacting"])
def test_incremental_delta_logits_equal_a_from_scratch_recompute_at_every_step(world, user_bl, cfg, slack, monkeypatch):
    monkeypatch.setattr(ResyncLM, "compact_slack", slack)  # 0: the cache is compacted whenever it has holes
    monkeypatch.setattr(ResyncLM, "compact_ratio", 1.0 if slack else 0.0)
    d = load_delta(world["delta"], user_bl, alpha=1.0)
    assert d.index is not None  # cross-vocabulary
    dec = Decoder(user_bl, [d])
    dec.trace = []
    gens = dec.generate(PROMPTS, cfg)
    checked = 0
    for step in dec.trace:
        for r, prompt in enumerate(PROMPTS):
            if step["active"][r]:
                ref = delta_reference(d, prompt, step["texts"][r])
                if dec.streams[0].gathered is not None:  # the gathered head's columns of the full logits
                    ref = dec.streams[0].gathered.of_full(ref)
                assert torch.allclose(step["delta"][0][r], ref, atol=1e-4), (step["texts"][r], r)
                checked += 1
    assert checked >= 30
    assert any(g.text for g in gens)
    if slack == 0:
        assert dec.streams[0].lm.compactions > 0


def test_retokenization_that_rewrites_earlier_delta_tokens_is_followed_exactly(world, user_bl, tiny_tokenizers):
    """User tokens of single characters build words that the delta's tokenizer merges into longer pieces,
    so earlier delta tokens change; the cached stream must still equal the from-scratch recompute."""
    d = load_delta(world["delta"], user_bl, alpha=1.0)
    streams = DeltaStreams(d, same_vocab=False)
    text = " the harbour town and its sailors"
    user_tok = user_bl.tokenizer
    ids = [user_tok.convert_tokens_to_ids(user_tok.convert_ids_to_tokens(user_tok(c, add_special_tokens=False)["input_ids"])[0])
           for c in text]
    assert all(len(user_tok(c, add_special_tokens=False)["input_ids"]) == 1 for c in text)
    streams.add(0, PROMPTS[0])
    streams.step([0], [""], [[]])
    prompt_ids = user_tok(PROMPTS[0])["input_ids"]
    gt = GenText(user_tok, prompt_ids)
    rewrites = 0
    for tid in ids:
        before = list(streams.text(0).ids)
        gen = gt.append(tid)
        out = streams.step([0], [gen], [[]])
        after = streams.text(0).ids
        if after[:len(before)] != before:
            rewrites += 1  # an earlier delta token was replaced
        assert after == streams.text(0).full_ids(streams.text(0).text)
        assert torch.allclose(out[0], delta_reference(d, PROMPTS[0], gen), atol=1e-4)
    assert gt.text == text
    assert rewrites >= 5
    fed = streams.generated_fed([0])[0]
    assert fed < 3 * len(ids)  # recomputes only the changed tail


def test_alpha_zero_gives_the_user_models_own_greedy_output(world, user_bl):
    d = load_delta(world["delta"], user_bl, alpha=0.0)
    cfg = GenerationConfig(max_new_tokens=12)
    ours = Decoder(user_bl, [d]).generate(PROMPTS, cfg)
    tok = user_bl.tokenizer
    for prompt, g in zip(PROMPTS, ours):
        ids = torch.tensor([tok(prompt)["input_ids"]])
        ref = user_bl.model.generate(ids, attention_mask=torch.ones_like(ids), do_sample=False, max_new_tokens=12,
                                     pad_token_id=tok.eos_token_id)[0, ids.shape[1]:].tolist()
        eos = tok.eos_token_id
        ref = ref[:ref.index(eos)] if eos in ref else ref
        assert g.token_ids == ref


@pytest.mark.parametrize("cfg", [GenerationConfig(max_new_tokens=14), SAMPLED], ids=["greedy", "sampled"])
def test_batch_equals_one_by_one(world, user_bl, cfg):
    deltas = [load_delta(world["delta"], user_bl, alpha=1.0), load_delta(world["delta_small"], user_bl, alpha=0.5)]
    dec = Decoder(user_bl, deltas)
    batch = dec.generate(PROMPTS, cfg, seeds=[7, 8, 9])
    for r, p in enumerate(PROMPTS):
        alone = dec.generate([p], cfg, seeds=[7 + r])[0]
        assert alone.token_ids == batch[r].token_ids
        assert alone.text == batch[r].text


def test_two_deltas_equal_the_hand_summed_formula_at_every_step(world, user_bl):
    a, b = 0.7, 1.6
    d1 = load_delta(world["delta"], user_bl, alpha=a)
    d2 = load_delta(world["delta_small"], user_bl, alpha=b)
    dec = Decoder(user_bl, [d1, d2])
    dec.trace = []
    gens = dec.generate(PROMPTS[:2], GenerationConfig(max_new_tokens=8))
    tok = user_bl.tokenizer
    for t, step in enumerate(dec.trace):
        for r, prompt in enumerate(PROMPTS[:2]):
            if not step["active"][r]:
                continue
            ids = tok(prompt)["input_ids"] + gens[r].token_ids[:t]  # the user reads its own ids
            with torch.no_grad():
                user_logits = user_bl.model(input_ids=torch.tensor([ids])).logits[0, -1]
            expected = F.log_softmax(user_logits, -1)
            for d, w in ((d1, a), (d2, b)):
                logits = delta_reference(d, prompt, step["texts"][r])
                mean = logits.double().mean().item()  # each delta centred on its mean (combine.centre_delta)
                for u in range(0, expected.shape[0], 37):  # by hand, id by id
                    j = int(d.index[u])
                    if j >= 0:
                        expected[u] += w * (logits[j] - mean)
            picked = torch.arange(0, expected.shape[0], 37)
            assert torch.allclose(step["final"][r][picked], expected[picked], atol=1e-4)


def test_same_vocabulary_fast_path_feeds_the_user_ids(world, tiny_tokenizers):
    user = load_lm(str(world["user_spm"]))
    d = load_delta(world["delta"], user, alpha=1.0)
    assert d.index is None
    dec = Decoder(user, [d])
    dec.trace = []
    gens = dec.generate(PROMPTS[:2], SAMPLED)
    tok = d.lm.tokenizer
    for t, step in enumerate(dec.trace):
        for r, prompt in enumerate(PROMPTS[:2]):
            if step["active"][r]:
                head = d.lm.bos + tok(FMT.replace("{prompt}", prompt), add_special_tokens=False)["input_ids"]
                with torch.no_grad():
                    ref = d.lm.model(input_ids=torch.tensor([head + gens[r].token_ids[:t]])).logits[0, -1]
                assert torch.allclose(step["delta"][0][r], ref, atol=1e-4)
    assert all(n == len(g.token_ids) - (g.finish_reason == "length") for g in gens for n in g.delta_tokens)


def test_proxy_tuning_matches_its_formula(world, tiny_tokenizers):
    user = load_lm(str(world["user_spm"]))
    expert = load_lm(str(world["delta"]))  # same tokenizer as the user
    anti = load_lm(str(make_tiny_llama(tiny_tokenizers["spm"], world["root"] / "anti", hidden=32, seed=9)))
    same = Decoder(user, [], expert=expert, anti_expert=expert).generate(PROMPTS, GenerationConfig(max_new_tokens=10))
    alone = Decoder(user, []).generate(PROMPTS, GenerationConfig(max_new_tokens=10))
    assert [g.token_ids for g in same] == [g.token_ids for g in alone]  # expert == anti-expert: no shift
    dec = Decoder(user, [], expert=expert, anti_expert=anti, proxy_alpha=0.8)
    dec.trace = []
    gens = dec.generate(PROMPTS[:1], GenerationConfig(max_new_tokens=6))
    ids = user.tokenizer(PROMPTS[0])["input_ids"]
    for t, step in enumerate(dec.trace):
        x = torch.tensor([ids + gens[0].token_ids[:t]])
        with torch.no_grad():
            lu, le, la = (m.model(input_ids=x).logits[0, -1] for m in (user, expert, anti))
        expected = F.log_softmax(lu, -1) + 0.8 * (F.log_softmax(le, -1) - F.log_softmax(la, -1))
        assert torch.allclose(step["final"][0], expected, atol=1e-4)


def test_logits_processor_greedy_equals_cmcs_own_loop(world, user_bl):
    from cmc_cli.engine.processor import CMCLogitsProcessor

    d = load_delta(world["delta"], user_bl, alpha=1.0)
    ours = Decoder(user_bl, [d]).generate(PROMPTS, GenerationConfig(max_new_tokens=10))
    tok = user_bl.tokenizer
    for prompt, g in zip(PROMPTS, ours):
        ids = torch.tensor([tok(prompt)["input_ids"]])
        proc = CMCLogitsProcessor([d], user_bl, [prompt])
        out = user_bl.model.generate(ids, attention_mask=torch.ones_like(ids), logits_processor=[proc], do_sample=False,
                                     max_new_tokens=10, pad_token_id=tok.eos_token_id)[0, ids.shape[1]:].tolist()
        eos = tok.eos_token_id
        out = out[:out.index(eos)] if eos in out else out
        assert out == g.token_ids


def test_logits_processor_on_a_left_padded_batch_equals_cmcs_own_loop(world, user_bl):
    """One HF generate call over all prompts, left-padded to one length: every row as cmc decodes it."""
    import copy
    import dataclasses

    from cmc_cli.engine.processor import CMCLogitsProcessor

    d = load_delta(world["delta"], user_bl, alpha=1.0)
    ours = Decoder(user_bl, [d]).generate(PROMPTS, GenerationConfig(max_new_tokens=10))
    tok = copy.deepcopy(user_bl.tokenizer)
    tok.pad_token, tok.padding_side = tok.eos_token, "left"
    user = dataclasses.replace(user_bl, tokenizer=tok)
    enc = tok(PROMPTS, return_tensors="pt", padding=True)
    assert len({len(tok(p)["input_ids"]) for p in PROMPTS}) > 1  # the batch really is padded
    proc = CMCLogitsProcessor([d], user, PROMPTS)
    out = user.model.generate(**enc, logits_processor=[proc], do_sample=False, max_new_tokens=10,
                              pad_token_id=tok.eos_token_id)[:, enc["input_ids"].shape[1]:].tolist()
    eos = tok.eos_token_id
    for row, g in zip(out, ours):
        assert (row[:row.index(eos)] if eos in row else row) == g.token_ids


def test_stop_strings_and_max_new_tokens(world, user_bl):
    dec = Decoder(user_bl, [])
    free = dec.generate(PROMPTS[:1], SAMPLED)[0]
    assert free.finish_reason == "length" and len(free.token_ids) == SAMPLED.max_new_tokens
    probe = free.text[3:5] if len(free.text) >= 5 else free.text[-1:]
    cfg = GenerationConfig(max_new_tokens=24, temperature=1.0, top_p=0.95, seed=11, stop=(probe,))
    stopped = dec.generate(PROMPTS[:1], cfg)[0]
    assert stopped.finish_reason == "stop"
    assert stopped.text == free.text[:free.text.find(probe)]


def test_gentext_equals_full_decoding(user_bl, tiny_tokenizers):
    tok = user_bl.tokenizer
    text = "Café — naïve 😀 harbour\n  towns"
    ids = tok(text, add_special_tokens=False)["input_ids"]
    g = GenText(tok, tok("Hi")["input_ids"])
    for i in ids:
        g.append(i)
        assert "\ufffd" not in g.text
    assert g.text == text


def test_deltatext_tail_reencoding_equals_full_tokenization(tiny_tokenizers):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(tiny_tokenizers["spm"]))
    words = "the harbour town sailors wrote novels about red blue green boxes and authors born".split()
    g = torch.Generator().manual_seed(0)
    dt = DeltaText(tok, "Q: hello\nA:", [tok.bos_token_id])
    text = ""
    for _ in range(120):
        w = words[int(torch.randint(len(words), (1,), generator=g))]
        for cut in (len(w) // 2, len(w)):  # words arrive in pieces
            text_now = text + " " + w[:cut]
            dt.update(text_now)
            assert dt.ids == dt.full_ids(dt.head + text_now)
        text = text_now
    assert dt.stats.tail_encodes > 10 * dt.stats.full_encodes
    assert dt.stats.chars_encoded < 0.2 * 240 * len(dt.text)  # far less than re-encoding everything


# ---- errors --------------------------------------------------------------------------------------------
def test_errors_are_clear(world, user_bl, tiny_tokenizers, tmp_path):
    with pytest.raises(CmcError, match="does not exist"):
        load_delta(tmp_path / "nope", user_bl, 1.0)
    with pytest.raises(ConfigError, match="finite"):
        load_delta(world["delta"], user_bl, float("nan"))
    # a map built for another pair of tokenizers
    other = TokenMap.build(load_lm(str(world["delta_small"])).vocab, user_bl.vocab)
    other.save(tmp_path / "wrong.safetensors")
    cfg = GenerateConfig(user=str(world["user_bl"]), deltas=[str(world["delta"])], prompt="Hi",
                         token_maps=[tmp_path / "wrong.safetensors"], device="cpu")
    with pytest.raises(TokenMapError, match="was built for delta tokenizer"):
        load_decoder(cfg)
    # a map that fits is used instead of building one
    right = TokenMap.build(load_lm(str(world["delta"])).vocab, user_bl.vocab)
    right.index[:5] = -1
    right.kind[:5] = UNMAPPED
    right.save(tmp_path / "right.safetensors")
    dec = load_decoder(GenerateConfig(user=str(world["user_bl"]), deltas=[str(world["delta"])], prompt="Hi",
                                      token_maps=[tmp_path / "right.safetensors"]))
    assert dec.deltas[0].index[:5].tolist() == [-1] * 5
    with pytest.raises(CmcError, match="context window"):
        Decoder(user_bl, []).generate(["word " * 400], GenerationConfig(max_new_tokens=4))
    with pytest.raises(ConfigError, match="chat template"):
        Decoder(user_bl, [], user_format="chat")
    with pytest.raises(ConfigError, match="--top-p"):
        GenerationConfig(top_p=0)


def test_top_k_one_is_greedy_and_top_p_keeps_the_nucleus():
    from cmc_cli.engine.sampling import choose_tokens

    torch.manual_seed(0)
    scores = torch.randn(4, 50)
    gens = [torch.Generator().manual_seed(i) for i in range(4)]
    cfg = GenerationConfig(temperature=1.5, top_k=1)
    assert torch.equal(choose_tokens(scores, cfg, gens), scores.argmax(-1))
    # top-p: only ids inside the smallest set reaching p are ever drawn
    probs = torch.softmax(scores[0], -1)
    order = probs.argsort(descending=True)
    nucleus = set(order[: int((probs[order].cumsum(0) < 0.5).sum()) + 1].tolist())
    cfg = GenerationConfig(temperature=1.0, top_p=0.5)
    drawn = {int(choose_tokens(scores[:1], cfg, [torch.Generator().manual_seed(s)])[0]) for s in range(200)}
    assert drawn <= nucleus and len(drawn) > 1


def test_chat_user_format_uses_the_user_models_template(world, tmp_path, tiny_tokenizers):
    import shutil

    chat_dir = tmp_path / "user-chat"
    shutil.copytree(world["user_bl"], chat_dir)
    cfg_path = chat_dir / "tokenizer_config.json"
    tok_cfg = json.loads(cfg_path.read_text())
    tok_cfg["chat_template"] = "{% for m in messages %}[{{ m['role'] }}] {{ m['content'] }}\n{% endfor %}[assistant] "
    cfg_path.write_text(json.dumps(tok_cfg))
    user = load_lm(str(chat_dir))
    dec = Decoder(user, [load_delta(world["delta"], user, 1.0)], user_format="chat")
    ids = dec.user_prompt_ids("Name a fish.")
    assert user.tokenizer.decode(ids) == "[user] Name a fish.\n[assistant] "
    fmt = Decoder(user, [], user_format="Q: {prompt}\nA:")
    assert user.tokenizer.decode(fmt.user_prompt_ids("Hi"), skip_special_tokens=True) == "Q: Hi\nA:"
    assert dec.generate(["Name a fish."], GenerationConfig(max_new_tokens=3))[0].token_ids


def test_suppressed_tokens_are_never_generated_and_the_rest_is_the_next_best(world, user_bl):
    """--suppress: the step's scores with the suppressed ids at -inf, nothing else changed."""
    d = load_delta(world["delta"], user_bl, alpha=1.0)
    free = Decoder(user_bl, [d]).generate(PROMPTS[:2], GenerationConfig(max_new_tokens=8))
    banned = sorted({g.token_ids[0] for g in free})
    tok = user_bl.tokenizer
    spelled = [tok.convert_ids_to_tokens(banned[0])] + [str(i) for i in banned[1:]]
    dec = Decoder(user_bl, [d])
    dec.trace = []
    gens = dec.generate(PROMPTS[:2], GenerationConfig(max_new_tokens=8, suppress=tuple(spelled)))
    for g in gens:
        assert not set(g.token_ids) & set(banned)
    first = dec.trace[0]["final"]
    assert torch.isinf(first[:, banned]).all()
    assert [g.token_ids[0] for g in gens] == first.argmax(-1).tolist()
    with pytest.raises(ConfigError, match="--suppress: 'no-such-token' is not a token of the user model"):
        dec.generate(PROMPTS[:1], GenerationConfig(max_new_tokens=2, suppress=("no-such-token",)))
