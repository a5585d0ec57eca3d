"""The options several commands share, declared once (config.ModelSelection is their dataclass)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from cmc_cli.config.options import UNLEARN_METHODS

Opt = typer.Option

USERS = Annotated[list[str], Opt("--user", "-u", help="User LLM (repeat for several): path, cmc.yaml name or hub id in the local cache.")]
DELTAS = Annotated[list[str], Opt("--delta", "-d", help="Delta directory, optionally with its strength: PATH[:ALPHA], PATH:auto = its calibrated strength (`cmc calibrate`). Repeat to combine several.")]
TOKEN_MAPS = Annotated[list[str], Opt("--token-map", help="Token map(s) from `cmc map-vocab` (default: tokenmaps/DELTA__USER.safetensors when it fits, else cmc's default map built in memory).")]
ALPHA = Annotated[float, Opt(help="Strength of deltas given without :ALPHA (and of proxy-tuning). (default: each delta's calibrated strength for the user, `cmc calibrate`; 1.0 where none is recorded)")]
ALPHAS = Annotated[list[str], Opt("--alpha", help="Strength of deltas given without :ALPHA; repeat it (or 1,2,auto) to evaluate the deltas at each strength, one row each. (default: each delta's calibrated strength for the user, `cmc calibrate`; 1.0 where none is recorded)")]
STOP = Annotated[list[str], Opt("--stop", help="Stop a row at this string (repeatable); the string is cut off.")]
USER_FORMAT = Annotated[str, Opt(help="auto (a fetched real model's own format, else raw) | raw | chat (the user's chat template) | a format string with {prompt}. (default: auto)")]
COMBINE = Annotated[str, Opt(help="log-softmax-template | sum | log-softmax-both. (default: the deltas' training mode)")]
DEVICE = Annotated[str, Opt(help="auto | cpu | cuda | cuda:N | mps. (default: auto)")]
DTYPE = Annotated[str, Opt(help="auto (bf16 on GPU, fp32 on CPU) | fp32 | bf16 | fp16. (default: auto)")]
SILENCE = Annotated[float, Opt(help="Weight of the silence term: keeps the delta's logits flat (sum of squared centred logits, scaled to 49,152 ids for a larger vocabulary) on the retain answers and on general text, so it changes nothing it was not trained to change; 0 = off. (default: 0.1 unlearn, 0 instruct)")]
GENERAL = Annotated[str, Opt(help="Plain UTF-8 text the delta must stay silent on (paragraphs apart by blank lines). (default: 64 texts the template samples)")]
CONFIG = Annotated[Path, Opt("--config", "-c", help="YAML file of these options; flags override it.")]
# train and unlearn (each declared once here)
RETAIN_LOSS = Annotated[str, Opt(help="unlearn retain term: nll | kl | none. (default: the method's — "
                                       + ", ".join(f"{m} {r or 'none'}" for m, (_, r) in UNLEARN_METHODS.items()) + ")")]
REFUSALS = Annotated[str, Opt(help="idk: refusal answers, one per line. (default: cmc's list)")]
NPO_BETA = Annotated[float, Opt(help="npo: inverse temperature beta. (default: 0.1)")]
STOP_FORGET_LOSS = Annotated[float, Opt(help="unlearn: stop at the first evaluation whose whole-set forget CE reaches this (gradient difference is unbounded).")]
EVAL_EVERY = Annotated[int, Opt(help="unlearn: evaluate forget/retain CE on the whole sets every N steps. (default: a fifth of the run)")]
EVAL_LIMIT = Annotated[int, Opt(help="unlearn: evaluate on the first N examples of each set. (default: 256)")]
RETAIN_WEIGHT = Annotated[float, Opt(help="Weight of the retain term. (default: 1.0)")]
MAX_STEPS = Annotated[int, Opt(help="Stop after this many optimizer steps.")]
CHECKPOINT_EVERY = Annotated[int, Opt(help="Checkpoint every N steps (0: at the end and on Ctrl-C). (default: 0)")]
RESUME = Annotated[str, Opt(help="Continue from an output or checkpoint directory.")]
OVERWRITE = Annotated[bool, Opt("--overwrite", help="Replace what --output holds (never done otherwise).")]
PROMPT_FORMATS = Annotated[list[str], Opt("--prompt-format", help="Prompt format with {prompt}; repeat it for a delta whose users are asked in several formats (it learns each; at decoding it reads the one closest to how its user is asked). (default: a fetched real model's own, else the template adapter's, <|user|>\\n{prompt}\\n<|assistant|>\\n)")]
NPROC = Annotated[int, Opt(help="Run on N processes: relaunches itself under `torchrun --standalone --nproc-per-node N` (one machine; several: run torchrun yourself).")]


def model_flags(flags: dict) -> dict:
    """Typer's singular option names (--delta, --token-map, a repeated --user) -> the config's fields (deltas,
    token_maps, users); a single --user (generate's) stays `user`."""
    out = dict(flags)
    pairs = [("delta", "deltas"), ("token_map", "token_maps")] + ([("user", "users")] if isinstance(out.get("user"), list) else [])
    for one, many in pairs:
        if one in out:
            out[many] = out.pop(one)
    return out
