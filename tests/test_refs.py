import pytest

from cmc_cli.errors import ModelRefError
from cmc_cli.plugins import adapter_for
from cmc_cli.refs import resolve


def test_path_directory_and_files(workdir, tiny_tokenizers):
    ref = resolve(str(tiny_tokenizers["spm"]))
    assert ref.kind == "dir" and ref.name == "tiny-spm" and ref.origin == "path"
    ref = resolve(str(tiny_tokenizers["spm"] / "tokenizer.json"))
    assert ref.kind == "tokenizer.json" and ref.name == "tiny-spm"


def test_tokenizer_json_file_alone_loads_with_roles_from_known_specials(workdir, tiny_tokenizers):
    from cmc_cli.engine.maps import load_vocab

    full = load_vocab(resolve(str(tiny_tokenizers["spm"])))
    alone = load_vocab(resolve(str(tiny_tokenizers["spm"] / "tokenizer.json")))
    assert alone.fingerprint == full.fingerprint
    assert alone.role_index()["eos"] == full.role_index()["eos"]


def test_hub_id_from_local_cache_only(workdir, tiny_tokenizers, monkeypatch):
    import shutil

    cache = workdir / "hf"
    snap = cache / "models--acme--tiny" / "snapshots" / "abc123"
    shutil.copytree(tiny_tokenizers["bl"], snap)
    (cache / "models--acme--tiny" / "refs").mkdir()
    (cache / "models--acme--tiny" / "refs" / "main").write_text("abc123")
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    import huggingface_hub.constants as c

    monkeypatch.setattr(c, "HF_HUB_CACHE", str(cache))
    ref = resolve("acme/tiny")
    assert ref.origin == "hf-cache" and ref.path == snap
    with pytest.raises(ModelRefError, match="not in the local Hugging Face cache"):
        resolve("acme/other")


def test_asset_cache_family_names(workdir, tiny_tokenizers):
    import json
    import shutil

    from cmc_cli import assets

    d = assets.tokenizer_dir("gpt2")
    shutil.copytree(tiny_tokenizers["bl"], d)
    (d / "cmc-asset.json").write_text(json.dumps({"family": "gpt2"}))
    ref = resolve("gpt2")
    assert ref.origin == "assets" and ref.adapter == "gpt2" and ref.name == "gpt2"
    assert adapter_for(ref).name == "gpt2"
    with pytest.raises(ModelRefError, match="cmc fetch tokenizers"):
        resolve("mistral")


def test_adapter_matching_from_files(workdir, tiny_tokenizers):
    import json
    import shutil

    d = workdir / "m"
    shutil.copytree(tiny_tokenizers["spm"], d)
    (d / "config.json").write_text(json.dumps({"model_type": "qwen2"}))
    assert adapter_for(resolve(str(d))).name == "qwen"
    (d / "config.json").write_text(json.dumps({"model_type": "something-new"}))
    assert adapter_for(resolve(str(d))).name == "hf"


def test_empty_reference(workdir):
    with pytest.raises(ModelRefError, match="empty model reference"):
        resolve(" ")
