from cmc_cli.vocab import (
    BYTE_LEVEL, PLAIN, SPM, WORD_START, build_vocab, byte_to_unicode, bytes_to_surface, normalise_piece,
    surface_to_bytes, unicode_to_byte, vocab_fingerprint,
)


def test_byte_alphabet_is_a_bijection_of_all_256_bytes():
    table = byte_to_unicode()
    assert sorted(table) == list(range(256))
    assert len(set(table.values())) == 256
    assert table[ord(" ")] == "Ġ" and table[ord("\n")] == "Ċ" and table[ord("a")] == "a"
    assert all(unicode_to_byte()[c] == b for b, c in table.items())


def test_word_start_markers_of_both_families_agree():
    assert normalise_piece("Ġhello", BYTE_LEVEL) == WORD_START + "hello"
    assert normalise_piece("▁hello", SPM) == WORD_START + "hello"
    assert normalise_piece(" hello", PLAIN) == WORD_START + "hello"
    assert normalise_piece("ĠĠ", BYTE_LEVEL) == WORD_START * 2
    assert normalise_piece("Ċ", BYTE_LEVEL) == "\n"


def test_byte_level_utf8_decoded_and_partial_bytes_kept():
    # "é" is bytes C3 A9, spelt "Ã©" in the byte alphabet
    assert normalise_piece("Ã©", BYTE_LEVEL) == "é"
    # the first byte of "中" (E4 B8 AD) alone is not valid UTF-8: kept as a surrogate, reversible
    partial = normalise_piece(byte_to_unicode()[0xE4], BYTE_LEVEL)
    assert surface_to_bytes(partial) == b"\xe4"
    assert partial == bytes_to_surface(b"\xe4")


def test_spm_byte_pieces_become_bytes_and_specials_have_no_surface():
    pieces = ["<unk>", "<s>", "</s>", "<0x0A>", "<0xE4>", "▁the", "<0x0A>x"]
    v = build_vocab("t", pieces, SPM, special={0: ["unk"], 1: ["bos"], 2: ["eos"]}, byte_fallback=True)
    assert v.surfaces[:3] == (None, None, None)
    assert v.byte_values == {3: 0x0A, 4: 0xE4}
    assert v.surfaces[3] == "\n" and surface_to_bytes(v.surfaces[4]) == b"\xe4"
    assert v.surfaces[6] == "<0x0A>x"  # only a whole piece is a byte piece
    assert v.role_index() == {"unk": 0, "bos": 1, "eos": 2}


def test_added_tokens_are_plain_text_in_byte_level_vocabularies():
    v = build_vocab("t", ["Ġa", "<tool>"], BYTE_LEVEL, special={}, raw_text_ids={1})
    assert v.surfaces == (WORD_START + "a", "<tool>")


def test_roles_are_ordered_eos_first():
    v = build_vocab("t", ["<|endoftext|>"], BYTE_LEVEL, special={0: ["bos", "unk", "eos"]})
    assert v.roles[0] == ("eos", "bos", "unk")


def test_fingerprint_depends_on_order_and_content():
    a = vocab_fingerprint(["a", "b"])
    assert a == vocab_fingerprint(["a", "b"])
    assert a != vocab_fingerprint(["b", "a"]) and a != vocab_fingerprint(["a", "b", "c"])
