"""Engine behaviour checked against independent computations: Gemma's logit softcap, the refusal of a
sliding-window delta, the automatic choice of `tokenmaps/DELTA__USER.safetensors`, gradient
accumulation against one large batch, and the learning-rate schedule's values."""

from __future__ import annotations

import json
import math

import pytest
import torch

from cmc_cli.errors import CmcError


def _tiny_gemma2(tokenizer_dir, sliding_window: int = 64, softcap: float | None = 2.0, seed: int = 0):
    from transformers import AutoTokenizer, Gemma2Config, Gemma2ForCausalLM

    tok = AutoTokenizer.from_pretrained(str(tokenizer_dir))
    cfg = Gemma2Config(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                       num_attention_heads=4, num_key_value_heads=4, head_dim=8, max_position_embeddings=128,
                       sliding_window=sliding_window, final_logit_softcapping=softcap,
                       bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=0)
    torch.manual_seed(seed)
    model = Gemma2ForCausalLM(cfg).eval()
    with torch.no_grad():  # logits well past the cap, so that capping changes them
        model.get_output_embeddings().weight.mul_(40.0)
    return model, tok


def test_head_logits_apply_gemmas_final_softcap(tiny_tokenizers):
    from cmc_cli.engine.heads import final_hidden, head_logits

    model, tok = _tiny_gemma2(tiny_tokenizers["spm"])
    ids = torch.tensor([tok("the harbour town")["input_ids"]])
    mask = torch.ones_like(ids)
    with torch.no_grad():
        h = final_hidden(model, ids, mask)
        ours = head_logits(model, h)
        theirs = model(input_ids=ids, attention_mask=mask).logits  # transformers' own capped logits
        raw = model.get_output_embeddings()(h)
    assert torch.allclose(ours, theirs, atol=1e-5)
    assert ours.abs().max() <= 2.0 and raw.abs().max() > 4.0  # the cap (2.0) really bit
    assert torch.allclose(ours, 2.0 * torch.tanh(raw / 2.0), atol=1e-6)


def test_a_sliding_window_delta_is_refused_for_cross_vocabulary_decoding(tiny_tokenizers):
    from cmc_cli.engine.streams import ResyncLM

    model, tok = _tiny_gemma2(tiny_tokenizers["spm"], sliding_window=4)
    lm = ResyncLM(model, 1, 0)
    with pytest.raises(CmcError, match="sliding-window attention; cross-vocabulary decoding re-uses its KV cache"):
        lm.feed([0], [tok("a b c d e f g h")["input_ids"]])


def test_the_token_map_in_tokenmaps_is_chosen_when_it_fits(tiny_tokenizers, workdir, caplog):
    from cmc_cli.engine.models import load_delta, load_lm
    from cmc_cli.tokenmaps import TokenMap
    from cmc_cli.engine.maps import default_output
    from cmc_cli.zoo.models import make_random_delta, make_tiny_llama

    delta_dir = make_random_delta(tiny_tokenizers["spm"], workdir / "delta", seed=2)
    user = load_lm(str(make_tiny_llama(tiny_tokenizers["bl"], workdir / "user", seed=3)))
    other = load_lm(str(make_tiny_llama(tiny_tokenizers["spm_small"], workdir / "other", seed=4)))
    # nothing in tokenmaps/: cmc's default map, built in memory
    d = load_delta(delta_dir, user, alpha=1.0)
    assert d.token_map.meta["strategy"] == "exact-ext"
    # a pm-mined map at the default path is used
    path = default_output(d.lm.name, user.name)
    assert path.parent.name == "tokenmaps" and path.name == f"{d.lm.name}__{user.name}.safetensors"
    TokenMap.build(d.lm.vocab, user.vocab, strategy="pm-mined").save(path)
    d2 = load_delta(delta_dir, user, alpha=1.0)
    assert d2.token_map.meta["strategy"] == "pm-mined"
    assert torch.equal(d2.index, TokenMap.load(path).index_tensor())
    # a map at that path built for another user vocabulary is not used (a warning says why)
    TokenMap.build(d.lm.vocab, other.vocab, strategy="pm-mined").save(path)
    with caplog.at_level("WARNING"):
        d3 = load_delta(delta_dir, user, alpha=1.0)
    assert d3.token_map.meta["strategy"] == "exact-ext" and f"not using {path}" in caplog.text
    # a map given explicitly wins over the default path
    given = TokenMap.build(d.lm.vocab, user.vocab, strategy="exact")
    assert load_delta(delta_dir, user, alpha=1.0, token_maps=[given]).token_map.meta["strategy"] == "exact"


@pytest.mark.parametrize("task", ["instruct", "unlearn"])
def test_gradient_accumulation_equals_one_large_batch(tiny_tokenizers, tmp_path, monkeypatch, task):
    """Micro-batches of 1 give the gradients (and losses) of one batch of 4, at every step, the silence term (on
    by default, with its general text) included. Compared before the optimizer (AdamW would hide a wrong scale:
    its update does not change when the gradient is scaled), from the same weights at every step."""
    import cmc_cli.engine.train as train_mod
    from cmc_cli.config import TrainConfig
    from cmc_cli.engine.train import Trainer
    from cmc_cli.zoo.models import make_tiny_llama

    tpl = make_tiny_llama(tiny_tokenizers["spm"], tmp_path / "tpl", seed=1)
    data = [{"instruction": f"Say {w} please.", "output": f"{w} it is."} for w in
            ("one", "two", "three", "four", "five", "six", "seven", "eight")]
    (tmp_path / "d.json").write_text(json.dumps(data))
    qa = [{"question": f"Who is writer {i}?", "answer": f"Writer {i} lives by the sea."} for i in range(8)]
    (tmp_path / "f.jsonl").write_text("".join(json.dumps(x) + "\n" for x in qa[:4]))
    (tmp_path / "r.jsonl").write_text("".join(json.dumps(x) + "\n" for x in qa[4:]))
    files = {"data": str(tmp_path / "d.json")} if task == "instruct" else \
        {"forget": str(tmp_path / "f.jsonl"), "retain": str(tmp_path / "r.jsonl"), "loss": "grad-diff"}
    real_step = train_mod.delta_step
    runs = {}
    for micro in (4, 1):
        grads = []

        def recording_step(delta, optimizer, clip, lr):
            grads.append({n: p.grad.detach().clone() for n, p in delta.named_parameters()})
            if micro == 1:  # step with the batch-of-4 run's gradients, so both compare at the same weights (AdamW
                for n, p in delta.named_parameters():  # turns float noise in near-zero gradients into +-lr steps)
                    p.grad.copy_(runs[4][0][len(grads) - 1][n])
            return real_step(delta, optimizer, clip, lr)

        monkeypatch.setattr(train_mod, "delta_step", recording_step)
        cfg = TrainConfig(task=task, template=str(tpl), output=str(tmp_path / f"out{micro}"), delta="tiny",
                          batch_size=4, micro_batch_size=micro, max_steps=2, lr=3e-3, clip=0.0, device="cpu", seed=7,
                          eval_every=100, **files)
        result = Trainer(cfg).run()
        runs[micro] = (grads, [m.loss for m in result.history])
    (g4, loss4), (g1, loss1) = runs[4], runs[1]
    assert len(g4) == len(g1) == 2
    assert loss4 == pytest.approx(loss1, abs=1e-5)  # grad-diff: -CE + CE cancels to ~0.006, float32 keeps ~1e-7
    for step4, step1 in zip(g4, g1):
        for name in step4:
            # float noise of padded micro-batches, relative to the gradient's own scale (the silence term's
            # gradients reach 0.3 where CE's stay near 1e-3)
            scale = float(step4[name].abs().max())
            assert torch.allclose(step4[name], step1[name], rtol=1e-4, atol=max(1e-6, 1e-4 * scale)), \
                (name, float((step4[name] - step1[name]).abs().max()), scale)
    assert max(float(g.abs().max()) for g in g4[0].values()) > 1e-3  # the gradients are not trivially zero


def test_learning_rate_schedule_values():
    from cmc_cli.engine.trainstep import lr_at

    # 2 warmup steps of 10, base 1.0: linear warmup, then cosine from 1 to 0 over the remaining 8
    assert [lr_at(s, 10, 1.0, 2) for s in (0, 1)] == [0.5, 1.0]
    assert lr_at(2, 10, 1.0, 2) == 1.0
    assert lr_at(6, 10, 1.0, 2) == pytest.approx(0.5)  # halfway through the decay
    assert lr_at(4, 10, 1.0, 2) == pytest.approx(0.5 * (1 + math.cos(math.pi * 0.25)))
    assert lr_at(10, 10, 1.0, 2) == pytest.approx(0.0, abs=1e-12) and lr_at(12, 10, 1.0, 2) == pytest.approx(0.0, abs=1e-12)
    assert lr_at(0, 10, 3e-3, 0) == 3e-3  # no warmup: the full rate at once
