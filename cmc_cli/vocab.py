"""Vocabularies (Vocab, its fingerprint) and surface normalisation: every tokenizer family's pieces in one
comparable alphabet. Adapters produce a Vocab; token maps read two.

A *surface* is the text a token stands for, with every space written as the canonical word-start
marker `▁` (U+2581). So SentencePiece `▁the`, byte-level BPE `Ġthe` and a plain ` the` all become
`▁the`; SentencePiece byte pieces `<0x0A>` and byte-level `Ċ` both become `\n`. Bytes that are not
valid UTF-8 on their own (a piece holding part of a multi-byte character) are kept losslessly as
lone surrogates (Python's `surrogateescape`), so byte pieces of different families still compare
equal byte for byte. Special tokens have no surface: they are mapped by role (bos, eos, ...).
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass, field
from functools import lru_cache

WORD_START = "\u2581"  # ▁
SPM = "spm"
BYTE_LEVEL = "byte-level"
PLAIN = "plain"
CONVENTIONS = (SPM, BYTE_LEVEL, PLAIN)

_BYTE_PIECE = re.compile(r"^<0x([0-9A-Fa-f]{2})>$")

# When a special token plays several roles (GPT-2's <|endoftext|> is bos, eos and unk), the first
# role in this order that the other vocabulary has decides. eos first: that is how such a token is
# used while decoding.
ROLE_PRIORITY = ("eos", "bos", "unk", "pad", "turn_start", "turn_end", "header_start", "header_end",
                 "user", "assistant", "system", "inst_start", "inst_end")


@lru_cache(maxsize=1)
def byte_to_unicode() -> dict[int, str]:
    """The byte-level BPE alphabet: printable bytes stand for themselves, the rest shift to 256+."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(
        range(ord("®"), ord("ÿ") + 1))
    table = {b: chr(b) for b in printable}
    n = 0
    for b in range(256):
        if b not in table:
            table[b] = chr(256 + n)
            n += 1
    return table


@lru_cache(maxsize=1)
def unicode_to_byte() -> dict[str, int]:
    return {c: b for b, c in byte_to_unicode().items()}


def bytes_to_surface(data: bytes) -> str:
    """Bytes -> surface text (invalid UTF-8 kept as surrogates), spaces as the word-start marker."""
    return data.decode("utf-8", errors="surrogateescape").replace(" ", WORD_START)


def surface_to_bytes(surface: str) -> bytes:
    return surface.replace(WORD_START, " ").encode("utf-8", errors="surrogateescape")


def byte_piece_value(piece: str) -> int | None:
    """`<0x0A>` -> 10; anything else -> None."""
    m = _BYTE_PIECE.match(piece)
    return int(m.group(1), 16) if m else None


def normalise_piece(piece: str, convention: str, *, raw_text: bool = False) -> str:
    """One ordinary (non-special, non-byte) piece -> its surface.

    `raw_text` marks added tokens, which tokenizers store as plain text, not in the model's alphabet.
    """
    if raw_text or convention == PLAIN:
        return piece.replace(" ", WORD_START)
    if convention == SPM:
        return piece.replace(" ", WORD_START)
    if convention == BYTE_LEVEL:
        table = unicode_to_byte()
        out = bytearray()
        for ch in piece:
            b = table.get(ch)
            if b is None:  # not in the byte alphabet: keep the character itself
                out += ch.encode("utf-8", errors="surrogateescape")
            else:
                out.append(b)
        return bytes_to_surface(bytes(out))
    raise ValueError(f"unknown convention {convention!r}")


def is_marker_only(surface: str) -> bool:
    return bool(surface) and all(c == WORD_START for c in surface)


@dataclass(frozen=True)
class Vocab:
    """A tokenizer's vocabulary seen through one alphabet.

    pieces:      raw piece per id, as the tokenizer spells it (what the fingerprint hashes)
    surfaces:    normalised surface per id; None for special tokens
    byte_values: id -> byte value, for SentencePiece byte-fallback pieces `<0xNN>`
    roles:       id -> roles in priority order, for special tokens
    raw_text_ids: added, non-special tokens (`<tool_call>`, Gemma's `<start_of_image>`): they map
                 exactly or not at all, and are never a prefix / extension / edit candidate
    """

    name: str
    convention: str
    pieces: tuple[str, ...]
    surfaces: tuple[str | None, ...]
    byte_values: dict[int, int] = field(default_factory=dict)
    roles: dict[int, tuple[str, ...]] = field(default_factory=dict)
    raw_text_ids: frozenset[int] = frozenset()

    @property
    def size(self) -> int:
        return len(self.pieces)

    @property
    def fingerprint(self) -> str:
        return vocab_fingerprint(self.pieces)

    def role_index(self) -> dict[str, int]:
        """role -> lowest id holding it."""
        out: dict[str, int] = {}
        for i in sorted(self.roles):
            for r in self.roles[i]:
                out.setdefault(r, i)
        return out


VOCAB_FORMAT = "cmc-vocab/1"


def vocab_to_json(v: Vocab) -> str:
    """A Vocab as JSON (lone surrogates escaped: a byte piece's half character survives the round trip)."""
    return json.dumps({"format": VOCAB_FORMAT, "name": v.name, "convention": v.convention, "pieces": list(v.pieces),
                       "surfaces": list(v.surfaces), "byte_values": {str(k): b for k, b in v.byte_values.items()},
                       "roles": {str(k): list(r) for k, r in v.roles.items()}, "raw_text_ids": sorted(v.raw_text_ids)},
                      ensure_ascii=True)


def vocab_from_json(text: str) -> Vocab:
    """vocab_to_json's inverse; ValueError for anything else."""
    d = json.loads(text)
    if not isinstance(d, dict) or d.get("format") != VOCAB_FORMAT or len(d["pieces"]) != len(d["surfaces"]):
        raise ValueError("not a cmc vocabulary")
    return Vocab(d["name"], d["convention"], tuple(d["pieces"]), tuple(d["surfaces"]),
                 {int(k): int(b) for k, b in d["byte_values"].items()},
                 {int(k): tuple(r) for k, r in d["roles"].items()}, frozenset(int(i) for i in d["raw_text_ids"]))


def vocab_fingerprint(pieces) -> str:
    """sha256 of the ordered token pieces: two tokenizers with equal fingerprints agree on every id."""
    h = hashlib.sha256()
    h.update(json.dumps(list(pieces), ensure_ascii=False).encode("utf-8", errors="surrogatepass"))
    return h.hexdigest()


def build_vocab(name: str, pieces: list[str], convention: str, *, special: dict[int, list[str]],
                raw_text_ids: set[int] = frozenset(), byte_fallback: bool = False) -> Vocab:
    """Normalise a whole vocabulary.

    special:      id -> roles (possibly empty) for every special token
    raw_text_ids: ids of added, non-special tokens stored as plain text
    byte_fallback: SentencePiece `<0xNN>` pieces stand for bytes
    """
    if convention not in CONVENTIONS:
        raise ValueError(f"unknown convention {convention!r}")
    surfaces: list[str | None] = []
    byte_values: dict[int, int] = {}
    for i, piece in enumerate(pieces):
        if i in special:
            surfaces.append(None)
            continue
        if byte_fallback and i not in raw_text_ids:
            v = byte_piece_value(piece)
            if v is not None:
                byte_values[i] = v
                surfaces.append(bytes_to_surface(bytes([v])))
                continue
        surfaces.append(normalise_piece(piece, convention, raw_text=i in raw_text_ids))
    roles = {i: tuple(sorted(set(r), key=_role_rank)) for i, r in special.items()}
    return Vocab(name=name, convention=convention, pieces=tuple(pieces), surfaces=tuple(surfaces),
                 byte_values=byte_values, roles=roles, raw_text_ids=frozenset(raw_text_ids) - set(special))


def _role_rank(role: str) -> int:
    return ROLE_PRIORITY.index(role) if role in ROLE_PRIORITY else len(ROLE_PRIORITY)
