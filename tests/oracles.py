"""Independent reference computations the tests (and benchmarks/bench_map_vocab.py) compare cmc against."""

from __future__ import annotations

from cmc_cli.tokenmaps.strategies import EXACT, EXTENSION, PREFIX, UNMAPPED, exact_table
from cmc_cli.vocab import WORD_START, Vocab, is_marker_only


def naive_pm_mined(delta: Vocab, u: str) -> tuple[int, int]:
    """The research code's way: scan the whole delta vocabulary for one user token.

    The independent reference of DeltaIndex.pm_mined: the same rules, computed the slow way.
    """
    from rapidfuzz.distance import Levenshtein

    exact = exact_table(delta)
    if u in exact:
        return exact[u], EXACT
    markers_only = is_marker_only(u)
    best = None
    for s, i in exact.items():
        if s == u or i in delta.raw_text_ids:
            continue
        if u.startswith(s):
            if s == WORD_START and not markers_only:
                continue
            kind = PREFIX
        elif s.startswith(u):
            kind = EXTENSION
        else:
            continue
        cand = (Levenshtein.distance(u, s), i, kind)
        if best is None or cand[:2] < best[:2]:
            best = cand
    if best is None:
        return -1, UNMAPPED
    return best[1], best[2]
