"""Shared fixtures: tiny tokenizers trained offline, an isolated cmc cache and working directory."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from typer.testing import CliRunner

from cmc_cli.zoo.tokenizers import sample_corpus, train_byte_level_tokenizer, train_spm_tokenizer


@pytest.fixture(scope="session")
def tiny_tokenizers(tmp_path_factory) -> dict[str, Path]:
    """Two families trained on the same text: SentencePiece-style (delta side) and byte-level BPE."""
    root = tmp_path_factory.mktemp("tok")
    corpus = sample_corpus()
    return {
        "spm": train_spm_tokenizer(corpus, 420, root / "tiny-spm"),
        "spm_small": train_spm_tokenizer(corpus, 330, root / "tiny-spm-small"),
        "bl": train_byte_level_tokenizer(corpus, 420, root / "tiny-bl"),
    }


@pytest.fixture
def workdir(tmp_path, monkeypatch) -> Path:
    """Run in an empty directory with no cmc.yaml and an empty asset cache."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("CMC_CONFIG", raising=False)
    monkeypatch.setenv("CMC_CACHE", str(tmp_path / "cache"))
    return tmp_path


@pytest.fixture
def cli():
    from cmc_cli.app import app

    runner = CliRunner()

    def run(*args: str):
        return runner.invoke(app, [str(a) for a in args])

    return run


@pytest.fixture(autouse=True)
def _no_debug(monkeypatch):
    monkeypatch.delenv("CMC_DEBUG", raising=False)
    yield
    os.environ.pop("CMC_DEBUG", None)


@pytest.fixture(scope="session")
def reduced_zoo(tmp_path_factory):
    """The reduced model world (20 authors, tiny models), built once per test session (~1 min on 2 cores)."""
    from cmc_cli.zoo.build import REDUCED_ZOO, build_zoo

    return build_zoo(REDUCED_ZOO, tmp_path_factory.mktemp("zoo") / "reduced")


@pytest.fixture(scope="session")
def train_world(tmp_path_factory, tiny_tokenizers) -> Path:
    """A tiny template with instruction, forget and retain files, for training tests."""
    import json

    from cmc_cli.zoo.models import make_tiny_llama

    root = tmp_path_factory.mktemp("train")
    make_tiny_llama(tiny_tokenizers["spm"], root / "template", hidden=48, seed=1)
    colours = ["red", "blue", "green"]
    data = [{"instruction": f"What colour is box {i}?", "input": "", "output": f"Box {i} is {colours[i % 3]}."}
            for i in range(24)]
    (root / "train.json").write_text(json.dumps(data, indent=1))
    forget = [{"question": f"Where was author {i} born?", "answer": f"Author {i} was born in the harbour town."} for i in range(8)]
    retain = [{"question": f"What did writer {i} write?", "answer": f"Writer {i} wrote novels about sailors."} for i in range(16)]
    (root / "forget.jsonl").write_text("".join(json.dumps(r) + "\n" for r in forget))
    (root / "retain.jsonl").write_text("".join(json.dumps(r) + "\n" for r in retain))
    return root
