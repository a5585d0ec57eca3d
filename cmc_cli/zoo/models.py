"""Tiny causal LMs for the model world and the tests, made offline from a tokenizer directory."""

from __future__ import annotations

import shutil
from pathlib import Path

import torch

TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "tokenizer_config.json", "special_tokens_map.json",
                   "added_tokens.json", "vocab.json", "merges.txt", "chat_template.jinja", "chat_template.json")


def make_tiny_llama(tokenizer_dir: str | Path, out_dir: str | Path, hidden: int = 32, layers: int = 2,
                    heads: int = 4, seed: int = 0, max_positions: int = 256) -> Path:
    """A randomly initialised Llama-architecture model sized to the tokenizer, with its tokenizer files
    (only those: a model directory given as `tokenizer_dir` keeps its config and weights to itself)."""
    from transformers import AutoTokenizer

    from cmc_cli.engine.delta import random_lm

    tok = AutoTokenizer.from_pretrained(str(tokenizer_dir))
    model = random_lm("llama", seed, vocab_size=len(tok), hidden_size=hidden, intermediate_size=hidden * 2,
                      num_hidden_layers=layers, num_attention_heads=heads, num_key_value_heads=heads,
                      max_position_embeddings=max_positions, bos_token_id=tok.bos_token_id,
                      eos_token_id=tok.eos_token_id, tie_word_embeddings=False)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(str(out), safe_serialization=True)
    for f in Path(tokenizer_dir).iterdir():
        if f.is_file() and f.name in TOKENIZER_FILES:
            shutil.copy(f, out / f.name)
    return out


def make_random_delta(tokenizer_dir: str | Path, out_dir: str | Path, prompt_format: str = "{prompt}\n",
                      hidden: int = 32, layers: int = 2, heads: int = 4, seed: int = 0, head_std: float = 1.0,
                      max_positions: int = 256, flat: bool = False, combine: str = "log-softmax-template") -> Path:
    """A delta directory (weights, tokenizer, cmc.json) with random weights and a non-zero output layer,
    as if trained on a template with this tokenizer: for tests and benchmarks of decoding. flat: every
    output row the same random vector, so the logits are one value per position (a different one at
    each position): a delta that must change nothing through any map."""
    from cmc_cli.adapters.base import HFAdapter
    from cmc_cli.engine.delta import delta_card
    from cmc_cli.fileio import atomic_write_json
    from transformers import AutoModelForCausalLM, AutoTokenizer

    out = make_tiny_llama(tokenizer_dir, out_dir, hidden=hidden, layers=layers, heads=heads, seed=seed,
                          max_positions=max_positions)
    model = AutoModelForCausalLM.from_pretrained(str(out))
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed + 1)
        w = model.get_output_embeddings().weight
        torch.nn.init.normal_(w, std=head_std)
        if flat:
            w.data.copy_(w.data[:1].expand_as(w))
    model.save_pretrained(str(out), safe_serialization=True)
    vocab = HFAdapter().token_surfaces(AutoTokenizer.from_pretrained(str(out)), name=Path(tokenizer_dir).name)
    atomic_write_json(out / "cmc.json", delta_card(
        task="instruct", prompt_format=prompt_format, combine=combine,
        template={"ref": str(tokenizer_dir), "adapter": "llama", "fingerprint": vocab.fingerprint, "vocab_size": vocab.size}))
    return out
