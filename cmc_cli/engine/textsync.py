"""Keeping two tokenizations of one growing text in step, cheaply.

`GenText`  turns the user model's generated ids into text, one token at a time (incremental
           detokenization: only a short window is decoded per token; an incomplete UTF-8 character
           is held back until its last byte arrives).
`DeltaText` keeps the delta's ids of `head + generated text` equal to a from-scratch tokenization of
           that text, re-encoding only the changed tail: it tokenizes from a word-start token a few
           tokens before the change and splices where the new tokens line up again with the old ones
           (same id at the same character offset, twice in a row). When they never line up it
           re-encodes the whole text, so the result is always what a full re-tokenization gives.
"""

from __future__ import annotations

from dataclasses import dataclass, field

REPLACEMENT = "\ufffd"


class GenText:
    """Text of the ids a model generated after its prompt, decoded incrementally."""

    def __init__(self, tokenizer, prompt_ids: list[int]):
        self.tok = tokenizer
        # a few prompt ids give the first generated token its left context (SentencePiece drops the
        # leading space of the first piece it decodes)
        self.ids = list(prompt_ids[-4:])
        self.prefix_offset = 0
        self.read_offset = len(self.ids)
        self.text = ""
        self.n_generated = 0

    def _decode(self, ids: list[int]) -> str:
        return self.tok.decode(ids, skip_special_tokens=True, clean_up_tokenization_spaces=False)

    def append(self, token_id: int) -> str:
        """Add one generated id; returns the whole generated text so far."""
        self.ids.append(int(token_id))
        self.n_generated += 1
        prefix = self._decode(self.ids[self.prefix_offset:self.read_offset])
        new = self._decode(self.ids[self.prefix_offset:])
        if len(new) > len(prefix) and not new.endswith(REPLACEMENT):
            self.text += new[len(prefix):]
            self.prefix_offset, self.read_offset = self.read_offset, len(self.ids)
        return self.text


def common_prefix_len(a, b, start: int = 0) -> int:
    """Length of the common prefix of two sequences, given that the first `start` items agree."""
    n = min(len(a), len(b))
    i = min(start, n)
    while i < n and a[i] == b[i]:
        i += 1
    return i


@dataclass
class SyncStats:
    tail_encodes: int = 0
    full_encodes: int = 0
    chars_encoded: int = 0


@dataclass
class DeltaText:
    """The delta's token ids for `head + generated text`, kept equal to a fresh tokenization."""

    tokenizer: object
    head: str
    bos: list[int]
    back: int = 4  # word-start tokens to step back before the first changed character
    text: str = ""
    ids: list[int] = field(default_factory=list)
    starts: list[int] = field(default_factory=list)  # character offset of each token (-1: bos)
    stats: SyncStats = field(default_factory=SyncStats)

    def __post_init__(self):
        self.text = self.head
        ids, starts = self._encode(self.head, 0)
        self.ids = list(self.bos) + ids
        self.starts = [-1] * len(self.bos) + starts
        self.stats.full_encodes += 1

    def _encode(self, text: str, base: int) -> tuple[list[int], list[int]]:
        enc = self.tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
        self.stats.chars_encoded += len(text)
        return list(enc["input_ids"]), [base + s for s, _ in enc["offset_mapping"]]

    def full_ids(self, text: str) -> list[int]:
        """From-scratch reference: the ids a fresh tokenization of `text` gives."""
        return list(self.bos) + list(self.tokenizer(text, add_special_tokens=False)["input_ids"])

    def update(self, generated: str) -> int:
        """Move to `head + generated`; returns how many leading ids are unchanged."""
        text = self.head + generated
        if text == self.text:
            return len(self.ids)
        old_ids = self.ids
        changed = common_prefix_len(self.text, text)  # first character that differs
        spliced = self._splice(text, changed)
        if spliced is None:
            ids, starts = self._encode(text, 0)
            ids, starts = list(self.bos) + ids, [-1] * len(self.bos) + starts
            self.stats.full_encodes += 1
        else:
            ids, starts = spliced
            self.stats.tail_encodes += 1
        self.text, self.ids, self.starts = text, ids, starts
        return common_prefix_len(old_ids, ids)

    def _splice(self, text: str, changed: int) -> tuple[list[int], list[int]] | None:
        nb = len(self.bos)
        # old tokens that end before the change; the last one may still merge with new text, so the
        # re-encode starts `back` word-start tokens earlier
        first_dirty = next((i for i in range(nb, len(self.ids)) if self._end(i) >= changed), len(self.ids))
        anchor, seen = first_dirty, 0
        while anchor > nb + 1 and seen < self.back:  # never the first body token (start-of-text rules)
            anchor -= 1
            if self._word_start(anchor):
                seen += 1
        if seen < self.back:
            return None
        base = self.starts[anchor]
        tail_ids, tail_starts = self._encode(text[base:], base)
        # line up: a tail token at the same offset with the same id as an old clean token, twice
        old_at = {self.starts[i]: i for i in range(anchor, first_dirty)}
        for j in range(min(len(tail_ids) - 1, 4)):
            i = old_at.get(tail_starts[j])
            if (i is not None and i + 1 < first_dirty and tail_ids[j] == self.ids[i]
                    and tail_ids[j + 1] == self.ids[i + 1] and tail_starts[j + 1] == self.starts[i + 1]):
                return self.ids[:i] + tail_ids[j:], self.starts[:i] + tail_starts[j:]
        return None

    def _end(self, i: int) -> int:
        return self.starts[i + 1] if i + 1 < len(self.starts) else len(self.text)

    def _word_start(self, i: int) -> bool:
        s = self.starts[i]
        return s > 0 and (self.text[s].isspace() or self.text[s - 1].isspace())
