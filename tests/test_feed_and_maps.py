"""Models are fed BOS exactly as they were trained; the token-map rules of the behaviour-transfer work
(exact-ext, pm-suppress, the shuffled control) against hand computations; the paired bootstrap CI."""

import json

import numpy as np
import pytest
import torch

from cmc_cli.config import TrainConfig
from cmc_cli.data.instruct import Example, bos_ids, encode
from cmc_cli.engine.combine import map_delta_logits
from cmc_cli.engine.decode import Decoder
from cmc_cli.engine.deltastate import DeltaStreams
from cmc_cli.engine.models import load_delta, load_lm
from cmc_cli.engine.train import Trainer
from cmc_cli.eval.metrics import mean_ci, paired_bootstrap
from cmc_cli.engine.maps import load_vocab
from cmc_cli.tokenmaps.strategies import EXACT, EXTENSION, PREFIX
from cmc_cli.tokenmaps.tokenmap import TokenMap
from cmc_cli.refs import resolve
from cmc_cli.zoo.models import make_tiny_llama


@pytest.fixture(scope="module")
def pair(tmp_path_factory, tiny_tokenizers):
    """A template whose tokenizer declares its BOS (as the world's do) and a user model whose tokenizer adds none."""
    from transformers import AutoTokenizer

    root = tmp_path_factory.mktemp("feed")
    template = make_tiny_llama(tiny_tokenizers["spm"], root / "template", hidden=32, seed=1)
    user = make_tiny_llama(tiny_tokenizers["bl"], root / "user", hidden=32, seed=2)
    plain = AutoTokenizer.from_pretrained(str(user), add_bos_token=False)  # a tokenizer that adds no BOS (GPT-2-like)
    plain.save_pretrained(str(user))
    data = [{"question": f"Where was author {i} born?", "answer": f"Author {i} was born in a harbour town."} for i in range(4)]
    (root / "f.jsonl").write_text("".join(json.dumps(r) + "\n" for r in data))
    return {"template": template, "user": user, "root": root}


def test_bos_follows_the_tokenizers_own_rule(pair):
    t = load_lm(str(pair["template"]))
    u = load_lm(str(pair["user"]))
    assert t.tokenizer("a")["input_ids"][0] == t.tokenizer.bos_token_id  # declared: the tokenizer adds it
    assert bos_ids(t.tokenizer) == [t.tokenizer.bos_token_id] == t.bos
    assert u.tokenizer.bos_token_id is not None and bos_ids(u.tokenizer) == [] == u.bos
    # training (encode) and decoding (user prompt) feed the same prefix
    for lm in (t, u):
        enc = encode([Example("Hi", "there", "x")], lm.tokenizer, "Q: {prompt}\nA:", 64)[0]
        dec = Decoder(lm, user_format="Q: {prompt}\nA:")
        ids = dec.user_prompt_ids("Hi")
        assert ids[:len(lm.bos) + 1] == enc.input_ids[:len(lm.bos) + 1]
        assert ids == lm.bos + lm.tokenizer("Q: Hi\nA:", add_special_tokens=False)["input_ids"]


def test_a_delta_is_fed_the_bos_recorded_at_training(pair, tmp_path):
    cfg = TrainConfig(task="unlearn", loss="grad-ascent", template=str(pair["template"]), forget=str(pair["root"] / "f.jsonl"),
                      output=str(tmp_path / "d"), batch_size=2, epochs=1, prompt_format="Q: {prompt}\nA:")
    Trainer(cfg).run()
    meta = json.loads((tmp_path / "d" / "cmc.json").read_text())
    t = load_lm(str(pair["template"]))
    assert meta["bos"] == t.bos == [t.tokenizer.bos_token_id]
    user = load_lm(str(pair["user"]))
    d = load_delta(tmp_path / "d", user, 1.0)
    assert d.lm.bos == meta["bos"]
    streams = DeltaStreams(d, same_vocab=False)
    streams.add(0, "Hi")
    assert streams.text(0).ids[0] == t.tokenizer.bos_token_id
    # a delta written before the BOS was recorded keeps the old rule: the tokenizer's bos, always
    meta.pop("bos")
    (tmp_path / "d" / "cmc.json").write_text(json.dumps(meta))
    assert load_delta(tmp_path / "d", user, 1.0).lm.bos == [t.tokenizer.bos_token_id]


def test_map_rules_on_the_tiny_vocabularies(tiny_tokenizers):
    delta = load_vocab(resolve(str(tiny_tokenizers["spm"])))
    user = load_vocab(resolve(str(tiny_tokenizers["bl"])))
    pm = TokenMap.build(delta, user, strategy="pm-mined")
    ee = TokenMap.build(delta, user, strategy="exact-ext")
    assert TokenMap.build(delta, user).meta["strategy"] == "exact-ext"  # cmc's default
    assert (pm.kind == PREFIX).any() and not (ee.kind == PREFIX).any()
    keep = pm.kind != PREFIX  # everything but the prefix rule is PM-MinED's
    assert np.array_equal(ee.index[keep & (pm.kind != EXTENSION)], pm.index[keep & (pm.kind != EXTENSION)])
    # where PM-MinED preferred a prefix, exact-ext may still find an extension; never a shorter delta token
    for i in np.flatnonzero(ee.kind == EXTENSION):
        assert delta.surfaces[ee.index[i]].startswith(user.surfaces[i]) and delta.surfaces[ee.index[i]] != user.surfaces[i]
    assert (ee.kind == EXACT).sum() == (pm.kind == EXACT).sum()
    sup = TokenMap.build(delta, user, strategy="pm-suppress")
    assert np.array_equal(sup.index, pm.index) and sup.meta["prefix_rule"] == "suppress"
    assert torch.equal(sup.cap_tensor(), torch.from_numpy(pm.kind == PREFIX)) and pm.cap_tensor() is None
    sh = TokenMap.build(delta, user, strategy="shuffled", seed=3)  # the control: the default's targets permuted
    assert np.array_equal(sh.index, ee.shuffled(3).index)
    mapped = ee.index >= 0
    assert np.array_equal(sh.index >= 0, mapped) and sorted(sh.index[mapped]) == sorted(ee.index[mapped])
    assert (sh.index[mapped] != ee.index[mapped]).mean() > 0.9


def test_suppress_cap_matches_hand_computation():
    d = torch.tensor([[5.0, 1.0, 0.0, -2.0, 3.0]])  # median 1.0
    index = torch.tensor([0, 0, 3, 4, -1])
    cap = torch.tensor([False, True, True, True, True])
    got = map_delta_logits(d, index, cap=cap, width=6)
    # user 0 exact: 5; user 1 prefix of delta 0: min(5, 1) = 1; user 2: min(-2, 1) = -2; user 3: min(3, 1) = 1;
    # user 4 unmapped: 0; user 5 (padding): 0
    assert got.tolist() == [[5.0, 1.0, -2.0, 1.0, 0.0, 0.0]]


def test_cli_shuffled_strategy_and_overwrite(cli, workdir, tiny_tokenizers):
    out = workdir / "sh.safetensors"
    r = cli("map-vocab", tiny_tokenizers["spm"], tiny_tokenizers["bl"], "--strategy", "shuffled", "--seed", "3", "-o", out)
    assert r.exit_code == 0, r.output
    delta = load_vocab(resolve(str(tiny_tokenizers["spm"])))
    user = load_vocab(resolve(str(tiny_tokenizers["bl"])))
    assert np.array_equal(TokenMap.load(out).index, TokenMap.build(delta, user).shuffled(3).index)
    before = out.read_bytes()
    r = cli("map-vocab", tiny_tokenizers["spm"], tiny_tokenizers["bl"], "--strategy", "shuffled", "--seed", "4", "-o", out)
    assert r.exit_code == 1 and "already exists; pass --overwrite" in r.output and out.read_bytes() == before
    r = cli("map-vocab", tiny_tokenizers["spm"], tiny_tokenizers["bl"], "--seed", "4", "-o", workdir / "x.safetensors")
    assert r.exit_code == 1 and "--seed applies to --strategy shuffled only" in r.output
    r = cli("map-vocab", tiny_tokenizers["spm"], tiny_tokenizers["bl"], "--strategy", "shuffled", "--seed", "4", "-o", out,
            "--overwrite")
    assert r.exit_code == 0 and np.array_equal(TokenMap.load(out).index, TokenMap.build(delta, user).shuffled(4).index)


def test_paired_bootstrap_matches_a_hand_computed_case():
    # differences (1, 0): resampled means are 0, 1/2, 1 with probabilities 1/4, 1/2, 1/4, so the 95% percentile
    # interval is [0, 1] and the mean 1/2
    m, lo, hi = paired_bootstrap([1.0, 1.0], [0.0, 1.0])
    assert (m, lo, hi) == (0.5, 0.0, 1.0)
    # a constant difference has a zero-width interval
    assert paired_bootstrap([3.0, 2.0, 5.0], [1.0, 0.0, 3.0]) == (2.0, 2.0, 2.0)
    with pytest.raises(ValueError, match="same non-empty items"):
        paired_bootstrap([1.0], [1.0, 2.0])


def test_mean_ci_matches_a_hand_computed_t_interval():
    m, h = mean_ci([1.0, 2.0, 3.0])  # sd 1, n 3: t(0.975, 2) = 4.302653 -> 4.302653 / sqrt(3)
    assert m == 2.0 and h == pytest.approx(4.302653 / 3 ** 0.5, rel=1e-6)
    assert np.isnan(mean_ci([1.0])[1])


def test_decoder_and_scorer_apply_the_suppress_rule(tmp_path, tiny_tokenizers):
    """With a pm-suppress map, every decode step's scores equal the hand-assembled formula: prefix-mapped user
    tokens get min(delta logit, the step's median delta logit), the others the plain mapped logit; the
    scorer's probabilities equal the decoder's under teacher forcing."""
    import torch.nn.functional as F

    from cmc_cli.engine.sampling import GenerationConfig
    from cmc_cli.engine.score import Scorer
    from cmc_cli.zoo.models import make_random_delta

    user = load_lm(str(make_tiny_llama(tiny_tokenizers["bl"], tmp_path / "u", hidden=32, seed=3)))
    delta_dir = make_random_delta(tiny_tokenizers["spm"], tmp_path / "d", prompt_format="Q: {prompt}\nA:", seed=5)
    d_vocab = load_vocab(resolve(str(delta_dir)))
    tm = TokenMap.build(d_vocab, user.vocab, strategy="pm-suppress")
    delta = load_delta(delta_dir, user, 0.7, [tm])
    assert delta.cap is not None and bool(delta.cap.any())
    dec = Decoder(user, [delta], user_format="raw")
    dec.trace = []
    dec.generate(["Tell me about the harbour"], GenerationConfig(max_new_tokens=6))
    index, cap = torch.from_numpy(tm.index), torch.from_numpy(tm.kind == PREFIX)
    for st in dec.trace:
        d = st["delta"][0][0]
        d = d - d.double().mean().float()  # centred on its mean (combine.centre_delta)
        mapped = d[index.clamp(min=0)]
        mapped = torch.where(cap, torch.minimum(mapped, d.median()), mapped).masked_fill(index < 0, 0.0)
        want = F.log_softmax(st["user"][0].float(), -1)
        want[:mapped.shape[0]] += 0.7 * mapped
        assert torch.allclose(st["final"][0], want, atol=1e-5)
    scored = Scorer(dec).score(["Tell me about the harbour"], ["town and its sailors, please."])[0]
    dec.trace = []
    dec.generate(["Tell me about the harbour"], GenerationConfig(max_new_tokens=len(scored.answer_ids) + 1),
                 force=[scored.answer_ids])
    forced = [float(F.log_softmax(st["final"][0], -1)[t]) for st, t in zip(dec.trace, scored.answer_ids)]
    assert len(forced) == len(scored.answer_ids) > 3
    assert scored.token_logprobs == pytest.approx(forced, abs=1e-4)
