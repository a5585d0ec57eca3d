import numpy as np
import pytest

from cmc_cli.errors import TokenMapError
from cmc_cli.tokenmaps import TokenMap
from cmc_cli.vocab import PLAIN, build_vocab


@pytest.fixture
def pair():
    delta = build_vocab("d", ["<s>", "the", "cat", "ca"], PLAIN, special={0: ["bos"]})
    user = build_vocab("u", ["<s>", "the", "cats", "dog", "c"], PLAIN, special={0: ["bos"]})
    return delta, user


def test_roundtrip_is_identical(tmp_path, pair):
    delta, user = pair
    tm = TokenMap.build(delta, user, strategy="pm-mined")
    path = tm.save(tmp_path / "m.safetensors")
    back = TokenMap.load(path, delta=delta, user=user)
    assert np.array_equal(back.index, tm.index) and np.array_equal(back.kind, tm.kind)
    assert back.index.dtype == np.int64 and back.kind.dtype == np.uint8
    assert back.meta == tm.meta
    assert back.meta["counts"] == {"exact": 1, "prefix": 1, "extension": 1, "edit": 0, "special": 1,
                                   "byte": 0, "unmapped": 1}
    assert back.index.tolist() == [0, 1, 2, -1, 3]
    assert sum(back.meta["counts"].values()) == user.size
    assert back.meta["delta"]["fingerprint"] == delta.fingerprint


def test_refuses_map_for_other_tokenizers(tmp_path, pair):
    delta, user = pair
    path = TokenMap.build(delta, user).save(tmp_path / "m.safetensors")
    other = build_vocab("other", ["<s>", "the", "cats", "dog", "cow"], PLAIN, special={0: ["bos"]})
    with pytest.raises(TokenMapError, match="built for user tokenizer 'u'.*rebuild it"):
        TokenMap.load(path, delta=delta, user=other)
    with pytest.raises(TokenMapError, match="built for delta tokenizer"):
        TokenMap.load(path, delta=other, user=user)


@pytest.mark.parametrize("cut", [0, 5, 40, -3])
def test_truncated_or_corrupt_file_is_a_clear_error(tmp_path, pair, cut):
    delta, user = pair
    data = TokenMap.build(delta, user).to_bytes()
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(data[:cut] if cut else b"not a safetensors file at all")
    with pytest.raises(TokenMapError, match="corrupt or truncated|not a cmc token map"):
        TokenMap.load(bad)


def test_other_safetensors_file_is_refused(tmp_path):
    import torch
    from safetensors.torch import save_file

    p = tmp_path / "weights.safetensors"
    save_file({"w": torch.zeros(3)}, str(p))
    with pytest.raises(TokenMapError, match="not a cmc token map"):
        TokenMap.load(p)


def test_tampered_ids_are_refused(tmp_path, pair):
    delta, user = pair
    tm = TokenMap.build(delta, user)
    tm.index = tm.index.copy()
    tm.index[1] = 99
    p = tm.save(tmp_path / "m.safetensors")
    with pytest.raises(TokenMapError, match="outside the delta vocabulary"):
        TokenMap.load(p)


def test_missing_file(tmp_path):
    with pytest.raises(TokenMapError, match="does not exist; build it"):
        TokenMap.load(tmp_path / "nope.safetensors")


def test_failed_write_keeps_the_old_file(tmp_path, pair, monkeypatch):
    delta, user = pair
    path = TokenMap.build(delta, user).save(tmp_path / "m.safetensors")
    before = path.read_bytes()
    import cmc_cli.fileio as fileio

    def boom(*a, **k):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(fileio.os, "fsync", boom)
    with pytest.raises(Exception, match="No space left"):
        TokenMap.build(delta, user, strategy="exact").save(path)
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["m.safetensors"]  # no temp file left


def test_empty_vocabulary_is_refused(pair):
    delta, _ = pair
    empty = build_vocab("empty", [], PLAIN, special={})
    with pytest.raises(TokenMapError, match="empty vocabulary"):
        TokenMap.build(delta, empty)


def test_shuffled_control_keeps_coverage_and_moves_targets():
    import numpy as np

    from cmc_cli.tokenmaps.tokenmap import TokenMap

    index = np.array([3, -1, 0, 1, 2, 4, -1, 5], dtype=np.int64)
    kind = np.where(index >= 0, 0, 6).astype(np.uint8)
    tm = TokenMap(index=index, kind=kind, meta={"strategy": "pm-mined"})
    sh = tm.shuffled(seed=1)
    assert (sh.index == -1).tolist() == (index == -1).tolist()
    assert sorted(sh.index[sh.index >= 0]) == sorted(index[index >= 0])
    assert (sh.index != index).any() and sh.meta["strategy"].startswith("shuffled(pm-mined")
    assert (tm.shuffled(seed=1).index == sh.index).all()


def test_atomic_writes_get_the_mode_open_gives(tmp_path):
    """A file written atomically (token maps, results, JSON) is as readable as one written with open():
    mkstemp's private 0600 must not leak into what users share."""
    import stat

    from cmc_cli.fileio import atomic_write_json, atomic_write_text

    (tmp_path / "plain.txt").write_text("x")
    want = stat.S_IMODE((tmp_path / "plain.txt").stat().st_mode)
    for f in (atomic_write_text(tmp_path / "a.md", "x"), atomic_write_json(tmp_path / "b.json", {"a": 1})):
        assert stat.S_IMODE(f.stat().st_mode) == want
