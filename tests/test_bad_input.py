"""Bad input of the classes a careless user produces gets one clear line and exit code 1, never a traceback:
missing data files, YAML of wrong types or binary content, empty and non-UTF-8 prompts."""

import json

import pytest


@pytest.mark.parametrize("args, needle", [
    (["train", "--data", "nope.json"], "--data nope.json: no such file; give the path of a JSON/JSONL data file"),
    (["train", "--data", "."], "--data .: a directory, not a data file"),
    (["unlearn", "--forget", "gone.jsonl", "--retain", "r.jsonl"], "--forget gone.jsonl: no such file"),
    (["unlearn", "--forget", "r.jsonl", "--retain", "gone.jsonl"], "--retain gone.jsonl: no such file"),
])
def test_missing_data_files(cli, workdir, args, needle):
    (workdir / "r.jsonl").write_text(json.dumps({"question": "q", "answer": "a"}) + "\n")
    r = cli(*args, "--template", "tpl", "-o", "out")
    assert r.exit_code == 1 and needle in r.output, r.output
    assert "Traceback" not in r.output and not (workdir / "out").exists()


@pytest.mark.parametrize("content, needle", [
    (b"lr: [1, 2]\n", "c.yaml: option 'lr' must be a number or null, got list"),
    (b"seed: 1.5\n", "option 'seed' must be a whole number, got float"),
    (b"epochs: true\n", "option 'epochs' must be a whole number or null, got bool"),
    (b"prompt_format: 3\n", "option 'prompt_format' must be a string or a list or null, got int"),
    (b"\xa7\x91\x00\xff binary", "c.yaml is not a text (UTF-8) YAML file"),
    (b"lr: 1\x00\n", "c.yaml holds binary data"),
])
def test_yaml_of_wrong_types_or_binary(cli, workdir, content, needle):
    (workdir / "d.jsonl").write_text(json.dumps({"instruction": "q", "output": "a"}) + "\n")
    (workdir / "c.yaml").write_bytes(content)
    r = cli("train", "--config", "c.yaml", "--template", "tpl", "--data", "d.jsonl", "-o", "out")
    assert r.exit_code == 1 and needle in r.output, r.output
    assert "Traceback" not in r.output


def test_yaml_reads_an_exponent_without_a_dot_as_a_number():
    from cmc_cli.config import TrainConfig

    import tempfile
    from pathlib import Path

    d = Path(tempfile.mkdtemp())
    (d / "c.yaml").write_text("lr: 3e-3\n")  # YAML 1.1 reads this as a string
    (d / "d.jsonl").write_text(json.dumps({"instruction": "q", "output": "a"}) + "\n")
    cfg = TrainConfig.from_sources(d / "c.yaml", {"template": "t", "data": str(d / "d.jsonl"), "output": str(d / "o")})
    assert cfg.lr == 3e-3


@pytest.mark.parametrize("prompt, needle", [("", "--prompt is empty"), ("   \n", "--prompt is empty"),
                                            ("caf\udce9", "--prompt holds bytes that are not UTF-8 text")])
def test_empty_or_invalid_prompt(cli, workdir, prompt, needle):
    r = cli("generate", "--user", "nowhere", "-p", prompt)
    assert r.exit_code == 1 and needle in r.output, r.output


@pytest.mark.parametrize("content, needle", [
    (b'{"instruction": "\xff\xfe bad"}\n', "p.jsonl:1: not UTF-8 text (byte b'\\xff'); save the file as UTF-8"),
    (b'{"instruction": "ok"}\n{"instruction": "x \\udcff y"}\n', "p.jsonl:2: field 'instruction' holds a character that is not valid text"),
    (b'{"instruction": ""}\n', "p.jsonl:1: field 'instruction' is empty"),
])
def test_bad_prompt_files(cli, workdir, content, needle):
    (workdir / "p.jsonl").write_bytes(content)
    r = cli("generate", "--user", "nowhere", "--prompts", "p.jsonl")
    assert r.exit_code == 1 and needle in r.output, r.output


def test_full_disk_keeps_what_was_written(tmp_path, monkeypatch):
    import errno
    import os

    from cmc_cli.errors import CmcError
    from cmc_cli.fileio import append_jsonl

    out = tmp_path / "g.jsonl"
    append_jsonl(out, [{"a": 1}])
    real = os.fsync

    def full(fd):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "fsync", full)
    with pytest.raises(CmcError, match="cannot write .*g.jsonl: No space left on device; the records before this batch are kept"):
        append_jsonl(out, [{"a": 2}, {"a": 3}])
    monkeypatch.setattr(os, "fsync", real)
    assert out.read_text() == '{"a": 1}\n'  # no torn record


def test_full_disk_in_a_checkpoint_keeps_the_previous_one(tmp_path, monkeypatch):
    import errno

    import torch

    import cmc_cli.engine.checkpoint as ck
    from cmc_cli.errors import CmcError

    model = torch.nn.Linear(2, 2)
    opt = torch.optim.AdamW(model.parameters())
    ck.save_checkpoint(tmp_path / "last", model, opt, {"step": 1})

    def full(*a, **k):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(ck, "save_file", full)
    with pytest.raises(CmcError, match="cannot write checkpoint .*No space left on device; the previous checkpoint is kept"):
        ck.save_checkpoint(tmp_path / "last", model, opt, {"step": 2})
    assert json.loads((tmp_path / "last" / "progress.json").read_text())["step"] == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last"]


def test_a_delta_whose_head_is_narrower_than_its_tokenizer(tmp_path, tiny_tokenizers):
    from transformers import AutoModelForCausalLM

    from cmc_cli.engine.models import load_delta, load_lm
    from cmc_cli.errors import CmcError
    from cmc_cli.zoo.models import make_random_delta, make_tiny_llama

    user = load_lm(str(make_tiny_llama(tiny_tokenizers["bl"], tmp_path / "u", seed=1)))
    d = make_random_delta(tiny_tokenizers["spm"], tmp_path / "d", seed=2)
    m = AutoModelForCausalLM.from_pretrained(str(d))
    m.resize_token_embeddings(m.config.vocab_size - 7)
    m.save_pretrained(str(d))
    with pytest.raises(CmcError, match="output logits but its tokenizer has .* tokens"):
        load_delta(d, user, 1.0)


def test_pickle_only_weights_are_refused_in_full(tmp_path, tiny_tokenizers):
    import torch

    from cmc_cli.engine.models import load_lm
    from cmc_cli.errors import CmcError
    from cmc_cli.zoo.models import make_tiny_llama

    d = make_tiny_llama(tiny_tokenizers["spm"], tmp_path / "m", seed=1)
    from safetensors.torch import load_file

    torch.save(load_file(str(d / "model.safetensors")), d / "pytorch_model.bin")
    (d / "model.safetensors").unlink()
    with pytest.raises(CmcError) as e:
        load_lm(str(d))
    msg = str(e.value)
    assert "has no safetensors weights (pytorch_model.bin instead); cmc never unpickles weights" in msg
    assert msg.endswith("in a trusted environment")


def test_causes_are_not_cut_mid_sentence():
    from cmc_cli.errors import cause

    e = RuntimeError("Error(s) in loading state_dict for LlamaForCausalLM:\n\tsize mismatch for lm_head.weight: "
                     "copying a param with shape [10, 4] from checkpoint, the shape in current model is [12, 4].")
    assert cause(e) == ("Error(s) in loading state_dict for LlamaForCausalLM: size mismatch for lm_head.weight: copying a "
                        "param with shape [10, 4] from checkpoint, the shape in current model is [12, 4].")
    long = RuntimeError("word " * 100)
    assert cause(long, 50).endswith(" …") and len(cause(long, 50)) <= 52
    assert cause(ValueError("")) == "ValueError"


@pytest.mark.parametrize("opt, val, needle", [
    ("--clip", "-1", "--clip must be a finite number >= 0 (0: off), got -1.0"),
    ("--weight-decay", "nan", "--weight-decay must be a finite number >= 0"),
    ("--checkpoint-every", "-1", "--checkpoint-every must be >= 0"),
    ("--delta", "huge", "--delta huge: neither a preset (tiny, mini, small, 15m, 42m, 110m) nor a model directory"),
])
def test_train_options_out_of_range_are_refused_before_loading(cli, workdir, opt, val, needle):
    (workdir / "d.jsonl").write_text(json.dumps({"instruction": "q", "output": "a"}) + "\n")
    r = cli("train", "--template", "nowhere", "--data", "d.jsonl", "-o", "out", opt, val)
    assert r.exit_code == 1 and needle in r.output, r.output
    assert "nowhere" not in r.output and not (workdir / "out").exists()  # refused before the template is looked up


def test_delta_preset_names_are_the_shapes_engine_knows():
    from cmc_cli.config import DELTA_PRESETS
    from cmc_cli.engine.delta import PRESETS

    assert tuple(PRESETS) == DELTA_PRESETS


@pytest.mark.parametrize("opt, val, needle", [("--top-p", "0", "--top-p must be in (0, 1]"),
                                              ("--temperature", "-1", "--temperature must be a finite number >= 0"),
                                              ("--max-new-tokens", "0", "--max-new-tokens must be positive")])
def test_decoding_options_are_checked_before_any_model_loads(cli, workdir, opt, val, needle):
    r = cli("generate", "--user", "nowhere", "-p", "Hi", opt, val)
    assert r.exit_code == 1 and needle in r.output and "nowhere" not in r.output, r.output


@pytest.mark.parametrize("cmd", [["generate", "--user", "nowhere", "-p", "Hi"],
                                 ["eval", "tofu", "-u", "nowhere", "--forget", "f.jsonl"],
                                 ["eval", "instruct", "-u", "nowhere", "--prompts", "f.jsonl"]])
@pytest.mark.parametrize("opt, val, needle", [("--device", "tpu", "--device 'tpu' is not a device"),
                                              ("--dtype", "fp8", "--dtype 'fp8' is unknown"),
                                              ("--user-format", "Question", "--user-format must be auto, raw, chat"),
                                              ("--combine", "avg", "--combine must be one of"),
                                              ("--alpha", "nan", "--alpha must be a finite number")])
def test_the_shared_model_options_are_checked_once_before_anything_loads(cli, workdir, cmd, opt, val, needle):
    """generate and every eval share one ModelSelection (config/runs.py) and one set of options."""
    (workdir / "f.jsonl").write_text(json.dumps({"question": "q", "answer": "a", "instruction": "q", "output": "a"}) + "\n")
    r = cli(*cmd, opt, val)
    assert r.exit_code == 1 and needle in r.output and "nowhere" not in r.output, r.output


def test_train_device_and_dtype_are_checked_before_loading(cli, workdir):
    (workdir / "d.jsonl").write_text(json.dumps({"instruction": "q", "output": "a"}) + "\n")
    r = cli("train", "--template", "nowhere", "--data", "d.jsonl", "-o", "out", "--dtype", "fp8")
    assert r.exit_code == 1 and "--dtype 'fp8' is unknown" in r.output and "nowhere" not in r.output


def test_dtype_names_are_the_ones_the_engine_knows():
    from cmc_cli.config import DTYPE_NAMES
    from cmc_cli.engine.devices import DTYPES

    assert tuple(DTYPES) == DTYPE_NAMES
