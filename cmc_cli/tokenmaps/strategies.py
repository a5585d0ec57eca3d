"""Token-map strategies: for every user token, the delta token whose logit it borrows.

pm-mined (the paper's; DESIGN.md; cmc's default is exact-ext, below), for a user token with surface u:
  1. an exact surface match wins outright (lowest delta id among equal surfaces; ordinary tokens
     before byte pieces);
  2. else the candidates are delta tokens that are a proper prefix of u (a hash lookup of each
     prefix of u) or that extend u (a precomputed table: for every proper prefix p of a delta
     token, the shortest / lowest-id token extending it); the bare word-start marker `▁` is a
     candidate only when u is made of markers alone;
  3. the smallest Levenshtein distance wins — for prefix relations it is exactly the length
     difference — and ties go to the lowest delta id;
  4. no candidate -> unmapped (-1), or the min-ed fallback when asked for.
min-ed: exact match, else the nearest delta token by Levenshtein distance over the whole delta
  vocabulary (as FuseLLM does), ties to the lowest id; computed in C by rapidfuzz, in blocks.
exact: exact match only.
exact-ext: exact match, else an extension candidate (as pm-mined's), never a shorter prefix.
Special tokens map by role (eos, bos, unk, chat markers), never by string; a token that only pads is
never generated and stays unmapped. Added non-special tokens (`<tool_call>`, `<start_of_image>`) map
exactly or not at all, and are no other token's prefix / extension / edit candidate: a delta's `<`
says nothing about `<start_of_image>`. SentencePiece byte pieces map to the delta's byte piece of the
same value when it has byte pieces.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import numpy as np

from cmc_cli.vocab import WORD_START, Vocab, is_marker_only

log = logging.getLogger(__name__)

# Kind codes stored in the token-map file (uint8). Documented in docs/formats.md.
EXACT, PREFIX, EXTENSION, EDIT, SPECIAL, BYTE, UNMAPPED = range(7)
KIND_NAMES = ("exact", "prefix", "extension", "edit", "special", "byte", "unmapped")


def exact_table(delta: Vocab) -> dict[str, int]:
    """surface -> lowest delta id; ordinary tokens first, byte pieces only where none has the surface."""
    exact: dict[str, int] = {}
    for i, s in enumerate(delta.surfaces):
        if s is not None and i not in delta.byte_values:
            exact.setdefault(s, i)
    for i in sorted(delta.byte_values):
        exact.setdefault(delta.surfaces[i], i)
    return exact


class DeltaIndex:
    """Lookup structures over the delta vocabulary, built once per delta and reused per user token."""

    def __init__(self, delta: Vocab):
        self.vocab = delta
        self.exact = exact_table(delta)
        self.byte_ids = {v: i for i, v in sorted(delta.byte_values.items(), reverse=True)}
        self.roles = delta.role_index()
        # candidates for prefix / extension / edit: every exact target but added raw-text tokens
        self.partial = {s: i for s, i in self.exact.items() if i not in delta.raw_text_ids}
        # best_ext[p] = (length, id) of the best delta token that properly extends p
        best_ext: dict[str, tuple[int, int]] = {}
        for s, i in self.partial.items():
            n = len(s)
            for k in range(1, n):
                p = s[:k]
                cur = best_ext.get(p)
                if cur is None or (n, i) < cur:
                    best_ext[p] = (n, i)
        self.best_ext = best_ext
        self._ed_ids: np.ndarray | None = None
        self._ed_surfaces: list[str] | None = None

    def pm_mined(self, u: str) -> tuple[int, int]:
        """(delta id, kind) for one ordinary user surface; (-1, UNMAPPED) without a candidate."""
        j = self.exact.get(u)
        if j is not None:
            return j, EXACT
        best = None  # (distance, id, kind)
        markers_only = is_marker_only(u)
        n = len(u)
        for k in range(n - 1, 0, -1):  # longest proper prefix = smallest distance
            p = u[:k]
            if p == WORD_START and not markers_only:
                continue
            j = self.partial.get(p)
            if j is not None:
                best = (n - k, j, PREFIX)
                break
        ext = self.best_ext.get(u)
        if ext is not None:
            cand = (ext[0] - n, ext[1], EXTENSION)
            if best is None or cand[:2] < best[:2]:
                best = cand
        if best is None:
            return -1, UNMAPPED
        return best[1], best[2]

    def exact_or_extension(self, u: str) -> tuple[int, int]:
        """exact-ext: an exact match, else the best delta token that extends u (never a shorter prefix of
        u, whose boost would leak onto u: ▁I's refusal boost onto ĠIron, docs/tokenmaps.md)."""
        j = self.exact.get(u)
        if j is not None:
            return j, EXACT
        ext = self.best_ext.get(u)
        return (ext[1], EXTENSION) if ext is not None else (-1, UNMAPPED)

    def exact_only(self, u: str) -> tuple[int, int]:
        j = self.exact.get(u)
        return (j, EXACT) if j is not None else (-1, UNMAPPED)

    def min_ed_many(self, surfaces: list[str], block: int = 256) -> list[int]:
        """Nearest delta id by Levenshtein distance for each surface (ties: lowest id)."""
        from rapidfuzz.distance import Levenshtein
        from rapidfuzz.process import cdist

        if self._ed_ids is None:
            pairs = sorted((i, s) for s, i in self.partial.items())
            self._ed_ids = np.array([i for i, _ in pairs], dtype=np.int64)
            self._ed_surfaces = [s for _, s in pairs]
        if not surfaces or self._ed_ids.size == 0:
            return [-1] * len(surfaces)
        out: list[int] = []
        for start in range(0, len(surfaces), block):
            chunk = surfaces[start:start + block]
            d = cdist(chunk, self._ed_surfaces, scorer=Levenshtein.distance, dtype=np.int32, workers=-1)
            out.extend(self._ed_ids[np.argmin(d, axis=1)].tolist())  # argmin: first = lowest id
        return out


BASE_STRATEGIES = ("pm-mined", "min-ed", "exact", "exact-ext")


def map_vocab(delta: Vocab, user: Vocab, strategy: str, fallback: str = "none",
              progress: Callable[[int, int], None] | None = None,
              index: DeltaIndex | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Build the map user id -> delta id. Returns (index int64[|V_user|], kind uint8[|V_user|])."""
    if strategy not in BASE_STRATEGIES:
        raise ValueError(f"unknown strategy {strategy!r}")
    index = index or DeltaIndex(delta)
    n = user.size
    out = np.full(n, -1, dtype=np.int64)
    kind = np.full(n, UNMAPPED, dtype=np.uint8)
    pending_ed: list[int] = []
    lookup = {"exact": index.exact_only, "exact-ext": index.exact_or_extension}.get(strategy, index.pm_mined)
    step = max(1, n // 100)
    for i in range(n):
        if progress is not None and i % step == 0:
            progress(i, n)
        s = user.surfaces[i]
        if s is None:  # special token: by role
            for r in user.roles.get(i, ()):
                j = index.roles.get(r) if r != "pad" else None
                if j is not None:
                    out[i], kind[i] = j, SPECIAL
                    break
            continue
        if i in user.byte_values and user.byte_values[i] in index.byte_ids:
            out[i], kind[i] = index.byte_ids[user.byte_values[i]], BYTE
            continue
        if i in user.raw_text_ids:  # an added token: exactly or not at all
            out[i], kind[i] = index.exact_only(s)
            continue
        if strategy == "min-ed":
            j, k = index.exact_only(s)
        else:
            j, k = lookup(s)
        if k == UNMAPPED and (strategy == "min-ed" or fallback == "min-ed"):
            pending_ed.append(i)
            continue
        out[i], kind[i] = j, k
    if pending_ed:
        log.info("min-ed over the whole delta vocabulary for %d tokens", len(pending_ed))
        nearest = index.min_ed_many([user.surfaces[i] for i in pending_ed])
        for i, j in zip(pending_ed, nearest):
            if j >= 0:
                out[i], kind[i] = j, EDIT
    if progress is not None:
        progress(n, n)
    return out, kind
