import numpy as np

from cmc_cli import __version__
from cmc_cli.tokenmaps import TokenMap
from cmc_cli.engine.maps import load_vocab
from cmc_cli.refs import resolve


def test_version_and_help(cli):
    r = cli("--version")
    assert r.exit_code == 0 and r.output.strip() == f"cmc {__version__}"
    r = cli("--help")
    assert r.exit_code == 0 and "map-vocab" in r.output and "adapters" in r.output


def test_map_vocab_writes_default_path_and_shows_table(cli, workdir, tiny_tokenizers):
    r = cli("map-vocab", tiny_tokenizers["spm"], tiny_tokenizers["bl"], "--show")
    assert r.exit_code == 0, r.output
    out = workdir / "tokenmaps" / "tiny-spm__tiny-bl.safetensors"
    assert out.is_file()
    for word in ("exact", "prefix", "unmapped", "sample mappings"):
        assert word in r.output
    delta = load_vocab(resolve(str(tiny_tokenizers["spm"])))
    user = load_vocab(resolve(str(tiny_tokenizers["bl"])))
    tm = TokenMap.load(out, delta=delta, user=user)
    assert tm.meta["strategy"] == "exact-ext" and tm.user_size == user.size == 420
    # the map equals a direct library build
    ref = TokenMap.build(delta, user)
    assert np.array_equal(tm.index, ref.index) and np.array_equal(tm.kind, ref.kind)
    # the two families segment differently: not a trivially exact map
    c = tm.counts()
    assert c["exact"] < user.size - 10 and c["prefix"] + c["extension"] > 0
    # <|endoftext|> (eos of the byte-level family) maps to the SentencePiece </s>
    eot = user.pieces.index("<|endoftext|>")
    assert delta.pieces[tm.index[eot]] == "</s>"


def test_map_vocab_quiet_prints_only_the_path(cli, workdir, tiny_tokenizers):
    r = cli("-q", "map-vocab", tiny_tokenizers["bl"], tiny_tokenizers["spm"], "-o", "m.safetensors",
            "--strategy", "exact")
    assert r.exit_code == 0, r.output
    assert r.output.strip() == "m.safetensors"
    assert TokenMap.load(workdir / "m.safetensors").meta["strategy"] == "exact"


def test_bad_option_value_is_a_usage_error(cli, workdir, tiny_tokenizers):
    r = cli("map-vocab", tiny_tokenizers["spm"], tiny_tokenizers["bl"], "--strategy", "fuzzy")
    assert r.exit_code == 2


def test_missing_path_is_one_line_error(cli, workdir):
    r = cli("map-vocab", "no/such/dir", "llama")
    assert r.exit_code == 1
    assert r.output.count("\n") == 1 and "error: model reference 'no/such/dir' not found" in r.output


def test_family_name_not_fetched_says_how(cli, workdir, tiny_tokenizers):
    r = cli("map-vocab", "llama", tiny_tokenizers["bl"])
    assert r.exit_code == 1 and "cmc fetch tokenizers" in r.output


def test_not_a_tokenizer(cli, workdir, tiny_tokenizers):
    junk = workdir / "notes.txt"
    junk.write_text("hello\n")
    r = cli("map-vocab", tiny_tokenizers["spm"], junk)
    assert r.exit_code == 1 and "is not a tokenizer file" in r.output
    empty_dir = workdir / "empty"
    empty_dir.mkdir()
    r = cli("map-vocab", empty_dir, tiny_tokenizers["spm"])
    assert r.exit_code == 1 and "no tokenizer.json" in r.output
    bad_json = workdir / "tokenizer.json"
    bad_json.write_text('{"version": "1.0", "model": {"type": "Nope"}}')
    r = cli("map-vocab", bad_json, tiny_tokenizers["spm"])
    assert r.exit_code == 1 and "cannot load a tokenizer" in r.output
    fake_gguf = workdir / "m.gguf"
    fake_gguf.write_bytes(b"GGUF\x03\x00")
    r = cli("map-vocab", fake_gguf, tiny_tokenizers["spm"])
    assert r.exit_code == 1 and "truncated GGUF" in r.output


def test_unwritable_output_leaves_nothing(cli, workdir, tiny_tokenizers):
    blocker = workdir / "file"
    blocker.write_text("x")
    r = cli("map-vocab", tiny_tokenizers["spm"], tiny_tokenizers["bl"], "-o", blocker / "m.safetensors")
    assert r.exit_code == 1 and "error: cannot write" in r.output
    r = cli("map-vocab", tiny_tokenizers["spm"], tiny_tokenizers["bl"], "-o", workdir)
    assert r.exit_code == 1 and "is a directory" in r.output
    assert sorted(p.name for p in workdir.iterdir()) == ["file"]


def test_debug_env_shows_traceback(cli, workdir, monkeypatch):
    monkeypatch.setenv("CMC_DEBUG", "1")
    r = cli("map-vocab", "no/such", "x")
    assert r.exit_code == 1 and r.exception is not None and type(r.exception).__name__ == "ModelRefError"


def test_cmc_yaml_names_and_adapters(cli, workdir, tiny_tokenizers):
    (workdir / "cmc.yaml").write_text(
        f"models:\n  small: {{path: {tiny_tokenizers['spm']}, adapter: llama}}\n  bl: {tiny_tokenizers['bl']}\n")
    r = cli("map-vocab", "small", "bl", "--show")
    assert r.exit_code == 0, r.output
    assert (workdir / "tokenmaps" / "small__bl.safetensors").is_file()


def test_cmc_yaml_errors_name_the_file_and_line(cli, workdir):
    (workdir / "cmc.yaml").write_text("models:\n  a: [unclosed\n")
    r = cli("map-vocab", "a", "b")
    assert r.exit_code == 1 and "cmc.yaml:" in r.output and "invalid YAML" in r.output
    (workdir / "cmc.yaml").write_text("models:\n  a: {adapter: llama}\n")
    r = cli("map-vocab", "a", "b")
    assert r.exit_code == 1 and "model 'a' needs a 'path'" in r.output
    (workdir / "cmc.yaml").write_text("modles: {}\n")
    r = cli("map-vocab", "a", "b")
    assert r.exit_code == 1 and "unknown top-level key(s) modles" in r.output


def test_unknown_adapter_suggests(cli, workdir, tiny_tokenizers):
    r = cli("map-vocab", tiny_tokenizers["spm"], tiny_tokenizers["bl"], "--user-adapter", "gtp2")
    assert r.exit_code == 1 and "Did you mean 'gpt2'" in r.output


def test_adapters_lists_builtins_in_match_order(cli):
    r = cli("adapters")
    assert r.exit_code == 0
    names = ["llama", "mistral", "gpt2", "qwen", "gemma", "hf"]
    pos = [r.output.index(f" {n} ") for n in names]
    assert pos == sorted(pos) and "built-in" in r.output


def test_fetch_unknown_asset(cli, workdir):
    r = cli("fetch", "tokenizers", "--only", "llama9")
    assert r.exit_code == 1 and "unknown asset(s) llama9" in r.output
    r = cli("fetch", "weights")
    assert r.exit_code == 1 and "available: tokenizers, models, text, all" in r.output
    r = cli("fetch", "models", "--only", "llama2")  # a tokenizer asking to fetch models: nothing to do
    assert r.exit_code == 1 and "names no models" in r.output


def test_empty_vocabulary(cli, workdir, tiny_tokenizers):
    from tokenizers import Tokenizer, models

    d = workdir / "empty-tok"
    d.mkdir()
    Tokenizer(models.BPE(vocab={}, merges=[])).save(str(d / "tokenizer.json"))
    r = cli("map-vocab", d / "tokenizer.json", tiny_tokenizers["spm"], "-o", "m.safetensors")
    assert r.exit_code == 1 and "has an empty vocabulary" in r.output
    assert not (workdir / "m.safetensors").exists()


def test_a_second_map_of_the_same_tokenizers_reads_the_vocabulary_cache(workdir, tiny_tokenizers, tmp_path):
    """The first map reads each tokenizer through transformers and keeps its vocabulary as JSON; the second
    imports neither torch nor transformers and writes the same bytes; an edited tokenizer file is a new key and
    a damaged entry is rebuilt (adapters/vocabcache.py)."""
    import json
    import os
    import shutil
    import subprocess
    import sys

    spm = tmp_path / "spm"
    shutil.copytree(tiny_tokenizers["spm"], spm)
    env = {**os.environ, "CMC_CACHE": str(tmp_path / "cache")}
    probe = ("import sys\nfrom typer.testing import CliRunner\nfrom cmc_cli.app import app\n"
             f"r = CliRunner().invoke(app, ['-q', 'map-vocab', {str(spm)!r}, {str(tiny_tokenizers['bl'])!r}, '-o', sys.argv[1]])\n"
             "assert r.exit_code == 0, r.output\nprint([m for m in ('torch', 'transformers') if m in sys.modules])")

    def run(out):
        res = subprocess.run([sys.executable, "-c", probe, str(tmp_path / out)], env=env, capture_output=True, text=True)
        assert res.returncode == 0, res.stderr
        return json.loads(res.stdout.strip().splitlines()[-1].replace("'", '"'))

    assert "transformers" in run("first.safetensors")  # nothing cached yet: read through the adapter
    entries = sorted((tmp_path / "cache" / "vocabs").glob("*.json"))
    assert len(entries) == 2
    assert run("second.safetensors") == []
    assert (tmp_path / "first.safetensors").read_bytes() == (tmp_path / "second.safetensors").read_bytes()
    for e in entries:
        e.write_text("{damaged")
    assert "transformers" in run("third.safetensors")
    assert (tmp_path / "third.safetensors").read_bytes() == (tmp_path / "first.safetensors").read_bytes()
    cfg = spm / "tokenizer_config.json"
    cfg.write_text(cfg.read_text() + "\n")  # the same tokenizer, another file: a new entry
    run("fourth.safetensors")
    assert len(list((tmp_path / "cache" / "vocabs").glob("*.json"))) == 3


def test_a_vocabulary_survives_its_json_round_trip(tiny_tokenizers):
    from cmc_cli.vocab import Vocab, vocab_from_json, vocab_to_json

    for key in ("spm", "bl"):
        v = load_vocab(resolve(str(tiny_tokenizers[key])))
        assert vocab_from_json(vocab_to_json(v)) == v
    odd = Vocab("odd", "byte-level", ("a", "\u00e2", "<s>"), ("a", "\udce2", None), {}, {2: ("bos", "eos")}, frozenset({0}))
    back = vocab_from_json(vocab_to_json(odd))  # half a UTF-8 character is a lone surrogate
    assert back == odd and back.fingerprint == odd.fingerprint
