import random

import numpy as np
import pytest

from oracles import naive_pm_mined

from cmc_cli.tokenmaps.strategies import (
    BYTE, EDIT, EXACT, EXTENSION, PREFIX, SPECIAL, UNMAPPED, DeltaIndex, map_vocab,
)
from cmc_cli.vocab import PLAIN, SPM, WORD_START, build_vocab

W = WORD_START


def plain(words, special=None):
    return build_vocab("v", list(words), PLAIN, special=special or {})


def levenshtein(a: str, b: str) -> int:
    """Textbook dynamic programme, independent of rapidfuzz."""
    prev = list(range(len(b) + 1))
    for i, ca in enumerate(a, 1):
        cur = [i]
        for j, cb in enumerate(b, 1):
            cur.append(min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (ca != cb)))
        prev = cur
    return prev[-1]


def test_paper_example_ultimate():
    delta = plain(["estimate", "ultimately", "ult", "ul", "u"])
    user = plain(["ultimate"])
    idx, kind = map_vocab(delta, user, "pm-mined")
    assert (idx[0], kind[0]) == (1, EXTENSION)  # -> "ultimately"
    idx, kind = map_vocab(delta, user, "min-ed")
    # "estimate" and "ultimately" are both 2 edits away; min-ed takes the lowest id: "estimate"
    assert (idx[0], kind[0]) == (0, EDIT)
    idx, kind = map_vocab(delta, user, "exact")
    assert (idx[0], kind[0]) == (-1, UNMAPPED)


def test_exact_match_wins_outright_and_lowest_id_among_equal_surfaces():
    delta = plain(["cat", "catalog", "cats", "cat"])
    idx, kind = map_vocab(delta, plain(["cat"]), "pm-mined")
    assert (idx[0], kind[0]) == (0, EXACT)


def test_prefix_versus_extension_by_distance_then_lowest_id():
    # user "abcd": prefix "ab" (distance 2) vs extension "abcdef" (2) -> tie, lowest id
    delta = plain(["abcdef", "ab"])
    assert map_vocab(delta, plain(["abcd"]), "pm-mined")[0][0] == 0
    delta = plain(["ab", "abcdef"])
    assert map_vocab(delta, plain(["abcd"]), "pm-mined")[0][0] == 0
    # a closer extension beats a farther prefix
    delta = plain(["a", "abcde"])
    idx, kind = map_vocab(delta, plain(["abcd"]), "pm-mined")
    assert (idx[0], kind[0]) == (1, EXTENSION)
    # among extensions of equal length, the lowest id
    delta = plain(["xyz", "abcdf", "abcde"])
    assert map_vocab(delta, plain(["abcd"]), "pm-mined")[0][0] == 1


def test_bare_word_start_marker_only_for_marker_tokens():
    delta = plain([W, "zz"])
    idx, kind = map_vocab(delta, plain([W + "hello", W * 3]), "pm-mined")
    assert (idx[0], kind[0]) == (-1, UNMAPPED)
    assert (idx[1], kind[1]) == (0, PREFIX)


def test_no_candidate_is_unmapped_unless_min_ed_fallback():
    delta = plain(["dog", "door"])
    user = plain(["cat", "doo"])
    idx, kind = map_vocab(delta, user, "pm-mined")
    assert idx.tolist() == [-1, 1] and kind.tolist() == [UNMAPPED, EXTENSION]
    idx, kind = map_vocab(delta, user, "pm-mined", fallback="min-ed")
    assert idx.tolist() == [0, 1] and kind.tolist() == [EDIT, EXTENSION]  # cat: dog 3 edits, door 4


def test_specials_map_by_role_never_by_string():
    delta = build_vocab("d", ["<s>", "</s>", "<|endoftext|>", "a"], SPM, special={0: ["bos"], 1: ["eos"]})
    # the user's <|endoftext|> plays eos (and bos, unk): eos decides; the delta's ordinary
    # string "<|endoftext|>" is never used for it
    user = build_vocab("u", ["<|endoftext|>", "<|im_start|>", "a"], SPM,
                       special={0: ["bos", "unk", "eos"], 1: ["turn_start"]})
    idx, kind = map_vocab(delta, user, "pm-mined")
    assert (idx[0], kind[0]) == (1, SPECIAL)
    assert (idx[1], kind[1]) == (-1, UNMAPPED)  # the delta has no turn_start marker
    assert (idx[2], kind[2]) == (3, EXACT)


def test_pad_tokens_stay_unmapped_and_added_tokens_map_only_exactly():
    """Found on Gemma-3: its <pad> took SmolLM2's <|im_end|> (pad and eos there) and the added
    <start_of_image> prefix-mapped to "<", so a delta raising "<" or eos raised both."""
    delta = build_vocab("d", ["<|endoftext|>", "<|im_end|>", "<", "<tool_call>", "tool", W + "a"], SPM,
                        special={0: ["bos"], 1: ["eos", "pad"]}, raw_text_ids={3})
    user = build_vocab("u", ["<pad>", "<eos>", "<start_of_image>", "<tool_call>", "<t", "<tool_call>x", W + "a"], SPM,
                       special={0: ["pad"], 1: ["eos"]}, raw_text_ids={2, 3})
    for fallback in ("none", "min-ed"):
        idx, kind = map_vocab(delta, user, "pm-mined", fallback=fallback)
        assert (idx[0], kind[0]) == (-1, UNMAPPED)  # pad only: never generated
        assert (idx[1], kind[1]) == (1, SPECIAL)
        assert (idx[2], kind[2]) == (-1, UNMAPPED)  # not "<"
        assert (idx[3], kind[3]) == (3, EXACT)  # the same added token on both sides
        assert (idx[4], kind[4]) == (2, PREFIX)  # an ordinary "<t": "<", never the delta's <tool_call>
        assert (idx[5], kind[5]) == (2, PREFIX)
        for i in (4, 5, 6):
            assert (idx[i], kind[i]) == naive_pm_mined(delta, user.surfaces[i]), i


def test_byte_pieces_map_by_value_and_bytes_fill_missing_surfaces():
    d_pieces = ["<unk>", "<0x0A>", "<0x41>", "A", "<0x01>"]
    delta = build_vocab("d", d_pieces, SPM, special={0: ["unk"]}, byte_fallback=True)
    user = build_vocab("u", ["<unk>", "<0x41>", "<0x0A>", "A", "\x01", "\n\n"], SPM, special={0: ["unk"]},
                       byte_fallback=True)
    idx, kind = map_vocab(delta, user, "pm-mined")
    assert idx.tolist() == [0, 2, 1, 3, 4, 1]
    assert kind.tolist() == [SPECIAL, BYTE, BYTE, EXACT, EXACT, PREFIX]
    # an ordinary "A" takes the ordinary delta token, not the byte piece <0x41>


@pytest.mark.parametrize("seed", range(5))
def test_fast_index_equals_naive_scan_on_random_vocabularies(seed):
    rng = random.Random(seed)
    alphabet = ["a", "b", "c", W]

    def word():
        return "".join(rng.choice(alphabet) for _ in range(rng.randint(1, 6)))

    delta = plain([word() for _ in range(300)])
    user = plain([word() for _ in range(300)])
    index = DeltaIndex(delta)
    for u in user.surfaces:
        assert index.pm_mined(u) == naive_pm_mined(delta, u), u


def test_min_ed_is_the_true_nearest_with_lowest_id():
    rng = random.Random(7)
    words = ["".join(rng.choice("abcde") for _ in range(rng.randint(1, 7))) for _ in range(200)]
    delta = plain(words)
    queries = ["".join(rng.choice("abcdef") for _ in range(rng.randint(1, 8))) for _ in range(50)]
    got = DeltaIndex(delta).min_ed_many(queries, block=7)
    exact = {}
    for i, w in enumerate(words):
        exact.setdefault(w, i)
    for q, j in zip(queries, got):
        best = min((levenshtein(q, w), i) for w, i in exact.items())
        assert j == best[1], q


def test_progress_reaches_total():
    seen = []
    map_vocab(plain(["a"]), plain(["a", "b", "c"]), "pm-mined", progress=lambda d, t: seen.append((d, t)))
    assert seen[-1] == (3, 3)


def test_identity_map_on_same_vocabulary():
    v = build_vocab("v", ["<unk>", "<0x00>", "a", "b", W + "ab"], SPM, special={0: ["unk"]}, byte_fallback=True)
    idx, _ = map_vocab(v, v, "pm-mined")
    assert np.array_equal(idx, np.arange(5))
