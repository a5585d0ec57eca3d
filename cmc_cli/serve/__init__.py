"""Serving: cmc's decode step inside vLLM (docs/serving.md).

state.py          the processor's logic over a serving engine's changing batch (no vLLM import)
vllm_processor.py the vLLM logits processor around it
server.py         `cmc serve`: vLLM's OpenAI-compatible server with that processor
"""

from __future__ import annotations

import os

PROCESSOR = "cmc_cli.serve.vllm_processor:CMCProcessor"  # for vllm.LLM(logits_processors=[...]) and --logits-processors


def configure(user: str, deltas=(), alpha: float | None = None, token_maps=(), combine: str | None = None,
              dtype: str = "auto"):
    """Describe what vLLM's processes load (the CMC_SERVE environment variable, inherited by the engine
    processes vLLM starts): call it before creating vllm.LLM. deltas: "[NAME=]PATH[:ALPHA]" as on the command
    line. Returns the ServeConfig."""
    from cmc_cli.config.serve import ENV, ServeConfig

    cfg = ServeConfig.from_cli(str(user), list(deltas), alpha, list(token_maps), combine, dtype)
    os.environ[ENV] = cfg.to_env()
    os.environ.setdefault("VLLM_USE_V2_MODEL_RUNNER", "0")  # the processor implements the V1 runner's interface
    return cfg
