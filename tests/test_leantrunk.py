"""engine/leantrunk.py against `transformers`' own trunk: the same ResyncLM operations (ragged prompts, steps
that drop and re-feed tokens with padding, rows added and kept, compaction, the look-ahead's tree-masked
peek) run twice, once with each trunk, and every step's logits agree; weights changed in place are seen;
models it does not cover get `transformers`' trunk."""

from __future__ import annotations

import pytest
import torch

from cmc_cli.engine import leantrunk
from cmc_cli.engine.delta import random_lm
from cmc_cli.engine.leantrunk import KVBuffer, LeanTrunk
from cmc_cli.engine.streams import ResyncLM

SHAPE = dict(vocab_size=97, hidden_size=48, intermediate_size=80, num_hidden_layers=3, max_position_embeddings=256,
             tie_word_embeddings=False)


def _model(arch: str, kv_heads: int = 4, **extra):
    model = random_lm(arch, 5, num_attention_heads=4, num_key_value_heads=kv_heads, **SHAPE, **extra).eval()
    with torch.no_grad():  # qwen2's q/k/v biases start at zero: make them matter
        for p in model.parameters():
            if p.dim() == 1 and p.abs().sum() == 0:
                p.normal_(0, 0.5)
    return model


def _pair(model, monkeypatch, batch: int = 3):
    lean = ResyncLM(model, batch, 0)
    monkeypatch.setattr(leantrunk, "LEAN", False)
    plain = ResyncLM(model, batch, 0)
    monkeypatch.setattr(leantrunk, "LEAN", True)
    assert isinstance(lean.trunk, LeanTrunk) and not isinstance(plain.trunk, LeanTrunk)
    return lean, plain


def _script(g: torch.Generator):
    """(keep, new) per step for 3 rows (then 4, then rows 0, 1, 3): prompts of different lengths, single tokens,
    dropped tails re-fed with several tokens, rows with nothing new."""
    def ids(n):
        return torch.randint(1, 97, (n,), generator=g).tolist()

    yield None, [ids(5), ids(9), ids(2)]
    for step in range(14):
        drop = [step % 3 == r for r in range(3)]
        yield drop, [ids(3) if d else ids(1) for d in drop]
        if step == 5:
            yield "add", 1
        if step == 9:
            yield "keep", [0, 1, 3]


def _run(lm: ResyncLM, g: torch.Generator) -> list[torch.Tensor]:
    outs, lengths = [], None
    for what, arg in _script(g):
        if what == "add":
            lm.add_rows(arg)
            continue
        if what == "keep":
            lm.keep_rows(arg)
            continue
        n = lm.lengths()
        keep = n if what is None else [max(1, x - 2) if i < len(what) and what[i] else x for i, x in enumerate(n)]
        new = list(arg) + [[] for _ in range(lm.B - len(arg))]
        if lm.B > 3:  # the added row gets a prompt, then single tokens; some steps leave a row out
            new[3] = [11, 12, 13] if lengths is not None and n[3] == 0 else ([7] if len(outs) % 2 else [])
        new = new[:lm.B]
        outs.append(lm.feed(keep, new))
        outs.append(torch.cat(lm.peek([(0, [3, 4, 5]), (1, [6]), (0, [8, 9])])))
        lengths = n
    return outs


@pytest.mark.parametrize("arch,kv_heads", [("llama", 4), ("llama", 2), ("qwen2", 2)], ids=["llama", "llama-gqa", "qwen2"])
@pytest.mark.parametrize("slack", [32, 0], ids=["no-compaction", "compacting"])
def test_lean_trunk_equals_transformers_trunk_at_every_step(arch, kv_heads, slack, monkeypatch):
    monkeypatch.setattr(ResyncLM, "compact_slack", slack)
    monkeypatch.setattr(ResyncLM, "compact_ratio", 1.0 if slack else 0.0)
    lean, plain = _pair(_model(arch, kv_heads), monkeypatch)
    a, b = _run(lean, torch.Generator().manual_seed(1)), _run(plain, torch.Generator().manual_seed(1))
    assert len(a) == len(b) > 20
    for x, y in zip(a, b):
        assert x.shape == y.shape
        assert torch.allclose(x, y, atol=1e-5), (x - y).abs().max()
    assert lean.lengths() == plain.lengths()
    if slack == 0:
        assert lean.compactions > 0 and lean.compactions == plain.compactions


def test_weights_changed_in_place_are_used_at_the_next_step(monkeypatch):
    model = _model("llama")
    lean, plain = _pair(model, monkeypatch, batch=1)
    for lm in (lean, plain):
        lm.feed([0], [[1, 2, 3]])
    with torch.no_grad():  # as an optimizer step does
        for p in model.parameters():
            p.mul_(1.5)
    for lm in (lean, plain):
        lm.keep_rows([0])
        lm.feed([0], [[1, 2, 3, 4]])  # everything recomputed with the new weights
    x, y = lean.feed([4], [[5]]), plain.feed([4], [[5]])
    assert torch.allclose(x, y, atol=1e-5)


def test_models_it_does_not_cover_get_transformers_trunk(tiny_tokenizers):
    from tests.test_engine_facts import _tiny_gemma2

    gemma, _ = _tiny_gemma2(tiny_tokenizers["spm"])
    assert LeanTrunk.for_model(gemma) is None
    assert LeanTrunk.for_model(_model("qwen2", use_sliding_window=True, sliding_window=8)) is None
    assert LeanTrunk.for_model(_model("llama", hidden_act="gelu")) is None
    assert isinstance(LeanTrunk.for_model(_model("llama")), LeanTrunk)


def test_kv_buffer_grows_in_place_and_crops():
    buf = KVBuffer()
    k = torch.arange(2 * 1 * 3 * 2, dtype=torch.float32).view(2, 1, 3, 2)
    keys, values = buf.append(k, -k)
    assert torch.equal(keys, k) and torch.equal(values, -k)
    room = buf._k.shape[2]
    for i in range(room - 3):
        keys, _ = buf.append(k[:, :, :1] + i, k[:, :, :1])
    assert buf._k.shape[2] == room  # filled without a new buffer
    keys, _ = buf.append(k, k)  # past the room: a larger buffer with everything kept
    assert keys.shape[2] == room + 3 and torch.equal(keys[:, :, :3], k) and torch.equal(keys[:, :, -3:], k)
    buf.crop(-3)
    assert buf.keys.shape[2] == room and buf.values.shape[2] == room
    buf.keys = k.clone()  # replaced (rows kept or compacted): values must follow before the next append
    with pytest.raises(RuntimeError, match="keys but"):
        buf.append(k, k)
