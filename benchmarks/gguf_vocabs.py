"""Audit transformers' GGUF vocabularies against the GGUFs' own token lists, before and after cmc's repair
(cmc_cli/adapters/gguf_vocab.py), on the llama.cpp vocab files of the llama-cpp-python sdist (ASSETS.md).

    python benchmarks/gguf_vocabs.py        # downloads the sdist once through pip (~30 s)

Prints a markdown table: tokens in the GGUF / from transformers / in cmc's vocabulary; pieces that differ
from the GGUF's; BOS and EOS ids; special-typed tokens (control, unknown, unused) that became text.
"""

from __future__ import annotations

import logging
import sys
import tempfile
from pathlib import Path

from cmc_cli import assets
from cmc_cli import fetch as fetcher
from cmc_cli.adapters.gguf_vocab import SPECIAL_TYPES, read_gguf_vocab
from cmc_cli.errors import CmcError
from cmc_cli.plugins import adapter_for
from cmc_cli.refs import resolve

FILES = ["deepseek-coder", "deepseek-llm", "llama-bpe", "phi-3", "llama-spm", "gpt-2", "qwen2", "falcon",
         "starcoder", "aquila"]


def audit(tok, v, gv) -> tuple[int, str, int]:
    n = min(gv.size, len(tok))
    pieces = tok.convert_ids_to_tokens(list(range(n)))
    diff = sum(1 for i in range(n) if pieces[i] != gv.tokens[i] and pieces[i] != gv.tokens[i].replace(" ", "\u2581"))
    roles = f"{tok.bos_token_id} / {tok.eos_token_id}"
    text = sum(1 for i, t in enumerate(gv.types[:v.size]) if t in SPECIAL_TYPES and v.surfaces[i] is not None)
    return diff, roles, text


def main() -> None:
    from transformers import AutoTokenizer

    logging.disable(logging.WARNING)
    with tempfile.TemporaryDirectory() as tmp:
        archive = fetcher._pip_download(assets.LLAMA_CPP, Path(tmp) / "pkg")
        print("| vocab file | GGUF tokens | transformers | cmc | pieces ≠ GGUF (transformers → cmc) | "
              "BOS / EOS: GGUF | transformers | cmc | special-typed as text (transformers → cmc) |")
        print("|---|---:|---:|---:|---:|---|---|---|---:|")
        for name in FILES:
            path = fetcher._extract_member(archive, f"{assets.LLAMA_CPP.prefix}ggml-vocab-{name}.gguf", Path(tmp))
            gv = read_gguf_vocab(path)
            ref = resolve(str(path))
            adapter = adapter_for(ref)
            try:
                raw = AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)
                fixed = adapter.load_tokenizer(ref)
            except (CmcError, ValueError) as e:
                print(f"| {name} | {gv.size:,} | not loadable ({str(e)[:60]}) | | | | | | |")
                continue
            d0, r0, t0 = audit(raw, adapter.token_surfaces(raw, name), gv)
            d1, r1, t1 = audit(fixed, adapter.token_surfaces(fixed, name), gv)
            g = f"{gv.roles.get('bos')} / {gv.roles.get('eos')}"
            print(f"| {name} | {gv.size:,} | {len(raw):,} | {len(fixed):,} | {d0} → {d1} | {g} | {r0} | {r1} | {t0} → {t1} |")
    sys.stdout.flush()


if __name__ == "__main__":
    main()
