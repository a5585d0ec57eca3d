"""GGUF files written here with gguf.GGUFWriter: the vocabulary repair against the GGUF's own token
list, and the GGUF -> safetensors conversion of `cmc fetch models` (so that a missing dependency of
that path, as accelerate was, fails CI and not a user's first fetch)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from cmc_cli.adapters.gguf_vocab import CONTROL, NORMAL, UNKNOWN, USER_DEFINED, read_gguf_vocab, repair_gguf_tokenizer
from cmc_cli.errors import TokenizerError
from cmc_cli.plugins import get_adapter
from cmc_cli.refs import ModelRef

gguf = pytest.importorskip("gguf")


def _bpe_parts(tokenizer_dir: Path) -> tuple[list[str], list[str]]:
    spec = json.loads((tokenizer_dir / "tokenizer.json").read_text())
    vocab = spec["model"]["vocab"]
    pieces = [p for p, _ in sorted(vocab.items(), key=lambda kv: kv[1])]
    merges = [m if isinstance(m, str) else " ".join(m) for m in spec["model"]["merges"]]
    return pieces, merges


def _write_vocab(path: Path, tokens: list[str], types: list[int], merges: list[str] | None, roles: dict[str, int],
                 model: str = "gpt2", scores: list[float] | None = None, arch: str = "llama", tensors=None, hp=None,
                 add_bos: bool | None = None):
    w = gguf.GGUFWriter(str(path), arch)
    if add_bos is not None:
        w.add_add_bos_token(add_bos)
    if hp:
        w.add_context_length(hp["ctx"])
        w.add_embedding_length(hp["hidden"])
        w.add_block_count(hp["layers"])
        w.add_feed_forward_length(hp["ffn"])
        w.add_head_count(hp["heads"])
        w.add_head_count_kv(hp["heads"])
        w.add_layer_norm_rms_eps(1e-6)
        w.add_rope_dimension_count(hp["hidden"] // hp["heads"])
        w.add_vocab_size(len(tokens))
    w.add_tokenizer_model(model)
    w.add_token_list(tokens)
    w.add_token_types(types)
    if scores is not None:
        w.add_token_scores(scores)
    if merges is not None:
        w.add_token_merges(merges)
    for role, i in roles.items():
        {"bos": w.add_bos_token_id, "eos": w.add_eos_token_id, "unk": w.add_unk_token_id,
         "pad": w.add_pad_token_id}[role](i)
    for name, arr in (tensors or {}).items():
        w.add_tensor(name, arr)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


def _deepseek_like(tiny_tokenizers, tmp_path: Path) -> tuple[Path, list[str]]:
    """A byte-level BPE vocabulary whose BOS / EOS are control tokens inside the vocabulary, followed by
    user-defined tokens, as DeepSeek-LLM / DeepSeek-Coder store theirs."""
    pieces, merges = _bpe_parts(tiny_tokenizers["bl"])
    pieces = [p for p in pieces if not (p.startswith("<") and p.endswith(">"))]  # drop its own specials
    tokens = pieces + ["<｜begin▁of▁sentence｜>", "<｜end▁of▁sentence｜>", "<｜fim▁hole｜>", "[PAD0]"]
    n = len(pieces)
    types = [NORMAL] * n + [CONTROL, CONTROL, USER_DEFINED, USER_DEFINED]
    path = _write_vocab(tmp_path / "ggml-vocab-deepseekish.gguf", tokens, types, merges,
                        {"bos": n, "eos": n + 1, "pad": n + 1}, add_bos=True)
    return path, tokens


def test_deepseek_like_vocab_keeps_its_size_roles_and_pieces(tiny_tokenizers, tmp_path):
    path, tokens = _deepseek_like(tiny_tokenizers, tmp_path)
    n = len(tokens) - 4
    from transformers import AutoTokenizer

    raw = AutoTokenizer.from_pretrained(str(tmp_path), gguf_file=path.name)
    adapter = get_adapter("llama")
    tok = adapter.load_tokenizer(ModelRef(text=str(path), path=path, adapter="llama"))
    # what transformers alone gives (the bug this guards against), if it still does
    assert len(raw) >= len(tokens)
    assert len(tok) == len(tokens)
    assert tok.convert_ids_to_tokens(list(range(len(tok)))) == tokens
    assert (tok.bos_token_id, tok.eos_token_id, tok.pad_token_id) == (n, n + 1, n + 1)
    ids = tok("hello world").input_ids
    assert ids[0] == n and max(ids) < len(tokens)  # the BOS it adds is the GGUF's, inside the logits
    plain = {"add_special_tokens": False}
    assert tok("hello world", **plain).input_ids == raw("hello world", **plain).input_ids  # text encodes as before
    v = adapter.load_vocab(ModelRef(text=str(path), path=path, adapter="llama"))
    assert v.size == len(tokens)
    assert v.roles[n] == ("bos",) and v.roles[n + 1][0] == "eos"
    assert v.surfaces[n] is None and v.surfaces[n + 1] is None
    assert n + 2 in v.raw_text_ids and v.surfaces[n + 2] == "<｜fim▁hole｜>"  # user-defined: plain text
    assert v.surfaces[n + 3] is None and not v.roles.get(n + 3)  # `[PADn]` filler: special, no role


def test_unknown_type_tokens_are_special_and_a_consistent_vocab_is_left_alone(tiny_tokenizers, tmp_path):
    """Phi-3's `[PADnnnnn]` tokens are GGUF type UNKNOWN: special tokens, not the text "[PAD..."."""
    pieces, merges = _bpe_parts(tiny_tokenizers["bl"])
    pieces = [p for p in pieces if not (p.startswith("<") and p.endswith(">"))]
    tokens = ["<s>", "</s>"] + pieces + ["[WEIRD1]", "[WEIRD2]"]
    types = [CONTROL, CONTROL] + [NORMAL] * len(pieces) + [UNKNOWN, UNKNOWN]
    path = _write_vocab(tmp_path / "phi.gguf", tokens, types, merges, {"bos": 0, "eos": 1})
    v = get_adapter("llama").load_vocab(ModelRef(text=str(path), path=path, adapter="llama"))
    assert v.size == len(tokens) and v.surfaces[-1] is None and v.surfaces[-2] is None
    assert not v.roles.get(len(tokens) - 1)
    # a second pass finds nothing to repair: the same object comes back
    from transformers import AutoTokenizer

    tok = get_adapter("llama").load_tokenizer(ModelRef(text=str(path), path=path, adapter="llama"))
    clean = tmp_path / "clean"
    tok.save_pretrained(str(clean))
    again = AutoTokenizer.from_pretrained(str(clean))
    assert again.convert_ids_to_tokens(list(range(len(again)))) == tokens


def test_gguf_vocab_reader_and_refusals(tmp_path):
    path = _write_vocab(tmp_path / "v.gguf", ["a", "b", "<s>"], [NORMAL, NORMAL, CONTROL], ["a b"], {"bos": 2})
    gv = read_gguf_vocab(path)
    assert gv.tokens == ["a", "b", "<s>"] and gv.types == [1, 1, 3] and gv.roles == {"bos": 2}
    bad = _write_vocab(tmp_path / "bad.gguf", ["a", "b"], [NORMAL, NORMAL], ["a b"], {"eos": 7})
    with pytest.raises(TokenizerError, match=r"bad.gguf: tokenizer.ggml.eos_token_id = 7 lies outside its 2 tokens"):
        read_gguf_vocab(bad)
    w = gguf.GGUFWriter(str(tmp_path / "novocab.gguf"), "llama")
    w.write_header_to_file(); w.write_kv_data_to_file(); w.write_tensors_to_file(); w.close()
    with pytest.raises(TokenizerError, match="no tokenizer.ggml.tokens"):
        repair_gguf_tokenizer(object(), tmp_path / "novocab.gguf")


def _tiny_llama_gguf(tiny_tokenizers, tmp_path: Path) -> Path:
    """A 2-layer Llama with f32 weights and the DeepSeek-like vocabulary, as a GGUF file."""
    path, tokens = _deepseek_like(tiny_tokenizers, tmp_path)
    pieces, merges = _bpe_parts(tiny_tokenizers["bl"])
    gv = read_gguf_vocab(path)
    hp = {"ctx": 64, "hidden": 16, "layers": 2, "ffn": 32, "heads": 2}
    rng = np.random.default_rng(0)
    h, f, v = hp["hidden"], hp["ffn"], len(tokens)

    def t(*shape):  # GGUF writes numpy shapes reversed: give them as torch would hold them
        return (rng.standard_normal(shape) * 0.2).astype(np.float32)

    tensors = {"token_embd.weight": t(v, h), "output_norm.weight": np.ones(h, np.float32), "output.weight": t(v, h)}
    for b in range(hp["layers"]):
        tensors |= {f"blk.{b}.attn_norm.weight": np.ones(h, np.float32), f"blk.{b}.ffn_norm.weight": np.ones(h, np.float32),
                    f"blk.{b}.attn_q.weight": t(h, h), f"blk.{b}.attn_k.weight": t(h, h),
                    f"blk.{b}.attn_v.weight": t(h, h), f"blk.{b}.attn_output.weight": t(h, h),
                    f"blk.{b}.ffn_gate.weight": t(f, h), f"blk.{b}.ffn_up.weight": t(f, h), f"blk.{b}.ffn_down.weight": t(h, f)}
    out = tmp_path / "models" / "tiny.gguf"
    out.parent.mkdir(parents=True, exist_ok=True)
    roles = {"bos": gv.roles["bos"], "eos": gv.roles["eos"]}
    return _write_vocab(out, gv.tokens, gv.types, merges, roles, tensors=tensors, hp=hp, add_bos=True)


def test_fetch_models_conversion_on_a_gguf_written_here(workdir, tiny_tokenizers, tmp_path):
    """`cmc fetch models`' conversion path end to end, offline: GGUF -> dequantised model -> safetensors
    directory, checked against the GGUF itself; needs every dependency that path needs (accelerate)."""
    from cmc_cli import assets
    from cmc_cli import fetch as fetcher
    from cmc_cli.engine.models import load_lm

    g = _tiny_llama_gguf(tiny_tokenizers, tmp_path)
    n = read_gguf_vocab(g).size
    a = assets.ModelAsset("tinygguf", "llama", "tiny GGUF written by the test", (), g.name, "0" * 64, n, "Q: {prompt}\nA:")
    out = fetcher._convert_model(a, g)
    assert out == assets.model_dir("tinygguf")
    info = json.loads((out / "cmc-asset.json").read_text())
    assert info["vocab_size"] == n and info["check"]["max_abs_logit_diff_vs_gguf"] <= 1e-4
    assert info["prompt_format"] == "Q: {prompt}\nA:"
    lm = load_lm(str(out))
    assert lm.vocab.size == n
    ids = lm.tokenizer("hello world", return_tensors="pt").input_ids
    assert ids[0, 0].item() == read_gguf_vocab(g).roles["bos"]
    # the converted directory and the GGUF give the same logits (an independent load of the GGUF)
    src = get_adapter("llama").load_model(ModelRef(text=str(g), path=g, adapter="llama"), dtype=torch.float32)
    with torch.no_grad():
        assert torch.allclose(lm.model(ids).logits, src(ids).logits, atol=1e-5)
    # a GGUF loaded directly as a user model decodes too
    direct = load_lm(str(g))
    assert direct.vocab.fingerprint == lm.vocab.fingerprint


def test_a_converted_tokenizer_of_another_size_is_stale(workdir):
    from cmc_cli import assets

    d = assets.tokenizer_dir("llama3")
    d.mkdir(parents=True)
    (d / "cmc-asset.json").write_text(json.dumps({"family": "llama", "vocab_size": 128257}))
    assert assets.fetched_tokenizer("llama3") is None and assets.find_family("llama3") is None
    (d / "cmc-asset.json").write_text(json.dumps({"family": "llama", "vocab_size": 128256}))
    assert assets.fetched_tokenizer("llama3") == d


def test_a_gguf_transformers_cannot_read_is_one_clear_error(tmp_path, cli, workdir):
    path = _write_vocab(tmp_path / "odd.gguf", ["a", "b", "<s>"], [NORMAL, NORMAL, CONTROL], ["a b"], {"bos": 2},
                        arch="refact")
    with pytest.raises(TokenizerError, match=r"cannot load a tokenizer from .*odd.gguf \(.*refact.*\)"):
        get_adapter("llama").load_tokenizer(ModelRef(text=str(path), path=path, adapter="llama"))
    r = cli("map-vocab", str(path), str(path), "-o", str(tmp_path / "m.safetensors"))
    assert r.exit_code == 1 and "refact" in r.output and "Traceback" not in r.output
    assert len(r.output.strip().splitlines()) == 1
