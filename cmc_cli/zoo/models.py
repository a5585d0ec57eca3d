"""Tiny causal LMs for the model world and the tests, made offline from a tokenizer directory."""

from __future__ import annotations

import shutil
from pathlib import Path

import torch


def make_tiny_llama(tokenizer_dir: str | Path, out_dir: str | Path, hidden: int = 32, layers: int = 2,
                    heads: int = 4, seed: int = 0, max_positions: int = 256) -> Path:
    """A randomly initialised Llama-architecture model sized to the tokenizer, with its tokenizer files."""
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    tok = AutoTokenizer.from_pretrained(str(tokenizer_dir))
    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=hidden, intermediate_size=hidden * 2, num_hidden_layers=layers,
                      num_attention_heads=heads, num_key_value_heads=heads, max_position_embeddings=max_positions,
                      bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, tie_word_embeddings=False)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = LlamaForCausalLM(cfg)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(str(out), safe_serialization=True)
    for f in Path(tokenizer_dir).iterdir():
        if f.is_file():
            shutil.copy(f, out / f.name)
    return out
