"""General text for the silence term of training (docs/training.md): text the delta has nothing to do on.

`--general FILE` is plain UTF-8 text; it is cut into paragraphs (blank lines), each tokenized with the
template's tokenizer after its BOS and split into windows of at most `length` tokens. Every position is a
target: the silence term reads the delta's logits there (engine/trainstep.chunked_terms)."""

from __future__ import annotations

from pathlib import Path

from cmc_cli.data.instruct import Encoded, bos_ids
from cmc_cli.data.records import read_utf8
from cmc_cli.errors import DataError


def read_plain_text(path: str | Path) -> list[str]:
    """The non-empty paragraphs of a UTF-8 text file; errors name the file (and the line)."""
    path = Path(path)
    text = read_utf8(path)
    paragraphs = [" ".join(p.split()) for p in text.split("\n\n")]
    paragraphs = [p for p in paragraphs if p]
    if not paragraphs:
        raise DataError(f"--general {path} holds no text; give a plain text file (paragraphs apart by blank lines)")
    return paragraphs


def windows(ids: list[int], bos: list[int], length: int, source: str) -> list[Encoded]:
    """`bos + ids` cut into windows of at most `length` tokens (each after the BOS), every token a target."""
    step = max(1, length - len(bos))
    out = []
    for s in range(0, len(ids), step):
        piece = bos + ids[s:s + step]
        if len(piece) > 1:
            out.append(Encoded(piece, list(piece), source))
    return out


def encode_general(paragraphs: list[str], tokenizer, length: int, source: str) -> list[Encoded]:
    bos = bos_ids(tokenizer)
    out = []
    for i, p in enumerate(paragraphs):
        ids = list(tokenizer(p, add_special_tokens=False)["input_ids"])
        out += windows(ids, bos, length, f"{source}:paragraph {i + 1}")
    return out
