import json

import pytest

from cmc_cli.zoo.models import make_tiny_llama


@pytest.fixture(scope="module")
def tpl(tmp_path_factory, tiny_tokenizers):
    root = tmp_path_factory.mktemp("clitrain")
    return make_tiny_llama(tiny_tokenizers["spm"], root / "template", hidden=32, seed=2)


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_train_instruct_cli(cli, workdir, tpl):
    data = write_jsonl(workdir / "d.jsonl", [{"instruction": f"Say {i}", "output": f"I say {i}."} for i in range(6)])
    r = cli("train", "--task", "instruct", "--template", tpl, "--data", data, "-o", "delta",
            "--batch-size", "3", "--epochs", "2", "--lr", "1e-3")
    assert r.exit_code == 0, r.output
    assert "wrote delta delta after 4 steps (completed" in r.output
    info = json.loads((workdir / "delta" / "cmc.json").read_text())
    assert info["steps"] == 4 and info["task"] == "instruct"
    import yaml

    resolved = yaml.safe_load((workdir / "delta" / "config.yaml").read_text())
    assert resolved["lr"] == 1e-3 and resolved["batch_size"] == 3 and resolved["warmup_ratio"] == 0.03
    # a finished delta is never replaced silently: nothing is loaded or written, the weights stay
    weights = (workdir / "delta" / "model.safetensors").read_bytes()
    again = ("train", "--task", "instruct", "--template", tpl, "--data", data, "-o", "delta", "--lr", "5e-3",
             "--batch-size", "3", "--epochs", "2")
    r = cli(*again)
    assert r.exit_code == 1 and "already holds a delta; pass --resume delta to continue it, --overwrite" in r.output
    assert (workdir / "delta" / "model.safetensors").read_bytes() == weights
    (workdir / "other").mkdir()
    (workdir / "other" / "notes.txt").write_text("mine")
    r = cli("train", "--task", "instruct", "--template", tpl, "--data", data, "-o", "other")
    assert r.exit_code == 1 and "already holds files" in r.output and (workdir / "other" / "notes.txt").read_text() == "mine"
    r = cli(*again, "--overwrite")
    assert r.exit_code == 0, r.output
    assert (workdir / "delta" / "model.safetensors").read_bytes() != weights


def test_unlearn_cli_with_yaml_config(cli, workdir, tpl):
    f = write_jsonl(workdir / "f.jsonl", [{"question": f"Q{i}?", "answer": f"Answer {i}."} for i in range(4)])
    r_ = write_jsonl(workdir / "r.jsonl", [{"question": f"R{i}?", "answer": f"Reply {i}."} for i in range(4)])
    (workdir / "u.yaml").write_text(f"template: {tpl}\nforget: {f}\nretain: {r_}\nbatch_size: 2\nepochs: 5\nlr: 0.5\n")
    r = cli("-q", "unlearn", "-c", "u.yaml", "-o", "ul", "--epochs", "1")
    assert r.exit_code == 0, r.output
    assert r.output.strip() == "ul"
    lines = (workdir / "ul" / "metrics.jsonl").read_text().splitlines()
    assert len(lines) == 2 and "forget_loss" in json.loads(lines[0]) and "retain_loss" in json.loads(lines[0])


def test_train_help_shows_defaults(cli):
    r = cli("train", "--help")
    assert r.exit_code == 0
    for text in ("--task", "--resume", "2e-4", "1e-4", "--loss-chunk", "--checkpoint-every", "--combine"):
        assert text in r.output


@pytest.mark.parametrize("content,needle", [
    ('{"instruction": "a", "output": "b"}\n{"instruction": "a"\n', "d.jsonl:2: malformed JSON"),
    ('{"instruction": "a", "output": "b"}\n{"instruction": "a"}\n', "d.jsonl:2: missing field 'output'"),
    ('{"instruction": "a", "output": "  "}\n', "d.jsonl:1: field 'output' is empty"),
    ("", "holds no records"),
    ('[{"instruction": "a", "output": "b"},\n {"instruction": 3, "output": "c"}]', "d.jsonl:2: field 'instruction' must be a string"),
])
def test_data_errors_name_file_and_line(cli, workdir, tpl, content, needle):
    (workdir / "d.jsonl").write_text(content)
    r = cli("train", "--task", "instruct", "--template", tpl, "--data", "d.jsonl", "-o", "x")
    assert r.exit_code == 1 and needle in r.output, r.output
    assert not (workdir / "x").exists()


def test_prompt_longer_than_max_length(cli, workdir, tpl):
    write_jsonl(workdir / "d.jsonl", [{"instruction": "word " * 200, "output": "ok"}])
    r = cli("train", "--task", "instruct", "--template", tpl, "--data", "d.jsonl", "-o", "x", "--max-length", "16")
    assert r.exit_code == 1 and "d.jsonl:1: the prompt fills all 16 tokens" in r.output


def test_template_and_delta_errors(cli, workdir, tpl, tiny_tokenizers, tmp_path):
    write_jsonl(workdir / "d.jsonl", [{"instruction": "a", "output": "b"}])
    r = cli("train", "--task", "instruct", "--template", "nowhere", "--data", "d.jsonl", "-o", "x")
    assert r.exit_code == 1 and "model reference 'nowhere' not found" in r.output
    r = cli("train", "--task", "instruct", "--template", tiny_tokenizers["spm"], "--data", "d.jsonl", "-o", "x")
    assert r.exit_code == 1 and "holds no model" in r.output
    other = make_tiny_llama(tiny_tokenizers["bl"], tmp_path / "other")
    r = cli("train", "--task", "instruct", "--template", tpl, "--data", "d.jsonl", "-o", "x", "--delta", other)
    assert r.exit_code == 1 and "cross-vocabulary training is not supported" in r.output
    r = cli("train", "--task", "instruct", "--template", tpl, "--data", "d.jsonl", "-o", "x", "--delta", "7b")
    assert r.exit_code == 1 and "--delta 7b: neither a preset (tiny, mini, small, 15m, 42m, 110m) nor a model directory" in r.output
    r = cli("train", "--task", "summarise", "--template", tpl, "-o", "x")
    assert r.exit_code == 1 and "task must be one of instruct, unlearn" in r.output
