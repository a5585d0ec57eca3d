"""Vocabularies cached on disk: a tokenizer read once through its adapter (transformers, seconds) is kept as
JSON in $CMC_CACHE/vocabs/, keyed by its adapter, its files and the declared family facts, so that `cmc map-vocab` of the same tokenizer
again reads one JSON file and imports neither torch nor transformers.

The key hashes every file the tokenizer can be read from (the reference itself, or a directory's .json,
.model, .txt, .tiktoken and .gguf files): whole when up to 64 MiB, else its size with its first and last MiB
(a GGUF model's tokens sit in its header). An edited file is a new key; a damaged or unreadable entry is
rebuilt; a cache that cannot be written is skipped.
"""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path

from cmc_cli.adapters.base import family_facts_digest
from cmc_cli.assets import cache_dir
from cmc_cli.fileio import atomic_write_text, files_digest
from cmc_cli.vocab import VOCAB_FORMAT, Vocab, vocab_from_json, vocab_to_json

log = logging.getLogger(__name__)

SUFFIXES = (".json", ".model", ".txt", ".tiktoken", ".gguf")
WHOLE = 64 << 20  # hashed whole up to this size


def source_files(path: Path) -> list[Path]:
    if path.is_file():
        return [path]
    return sorted(p for p in path.iterdir() if p.is_file() and p.suffix in SUFFIXES)


def vocab_key(path: Path, adapter: str) -> str:
    """The files' digest with the adapter and the declared family facts (a plugin's markers change the reading)."""
    extra = f"{VOCAB_FORMAT}\0{adapter}\0{family_facts_digest()}".encode()
    return files_digest(source_files(path), WHOLE, extra)


def cached_vocab(path: Path, name: str, adapter: str, build) -> Vocab:
    """The vocabulary of the tokenizer at `path` read through `adapter`: from the cache, else build() and keep it."""
    try:
        entry = cache_dir() / "vocabs" / f"{vocab_key(path, adapter)[:32]}.json"
    except OSError as e:  # an unreadable file: the adapter's own loading says what is wrong
        log.debug("vocabulary cache skipped for %s: %s", path, e)
        return build()
    if entry.is_file():
        try:
            return dataclasses.replace(vocab_from_json(entry.read_text(encoding="utf-8")), name=name)
        except (OSError, ValueError, KeyError, TypeError) as e:
            log.debug("vocabulary cache entry %s unreadable (%s); rebuilt", entry, e)
    vocab = build()
    try:
        atomic_write_text(entry, vocab_to_json(vocab))
    except OSError as e:
        log.debug("vocabulary cache not written (%s)", e)
    return vocab
