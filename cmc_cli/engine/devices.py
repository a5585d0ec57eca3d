"""Device and dtype choice: cuda, then mps, then cpu; bf16 on GPU, fp32 on CPU by default."""

from __future__ import annotations

import torch

from cmc_cli.config.options import check_dtype
from cmc_cli.errors import ConfigError

DTYPES = {"auto": None, "float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16,
          "bf16": torch.bfloat16, "float16": torch.float16, "fp16": torch.float16}


def pick_device(name: str = "auto") -> torch.device:
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        dev = torch.device(name)
    except RuntimeError:
        raise ConfigError(f"--device '{name}' is not a device; use auto, cpu, cuda, cuda:N or mps") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError("--device cuda asked for, but no CUDA device is available; use --device cpu")
    return dev


def pick_dtype(name: str, device: torch.device) -> torch.dtype:
    check_dtype(name)
    dt = DTYPES[name]
    if dt is None:
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    return dt
