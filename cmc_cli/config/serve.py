"""Options of `cmc serve`, the description every vLLM process reads (CMC_SERVE), and the per-request
choice of deltas (a request's `vllm_xargs`): all checked here, before a model loads or a request runs."""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path

from cmc_cli.config.options import check_combine, check_dtype
from cmc_cli.config.runs import AUTO, DeltaSpec, check_alpha_value, parse_alpha
from cmc_cli.errors import ConfigError

ENV = "CMC_SERVE"  # the JSON of a ServeConfig, in the environment of the server and its engine processes
REQUEST_KEYS = ("cmc_deltas", "cmc_prompt")  # what a request may give in vllm_xargs


@dataclass
class ServedDelta:
    name: str  # what requests call it
    path: str
    alpha: float | str | None  # None: calibrated for the user, else 1; "auto": calibrated (ServeState.load resolves)


@dataclass
class ServeConfig:
    """What the server loads: the user model (a directory vLLM loads), the deltas by name with their
    default strengths, the deltas a request gets when it names none, token maps and the combine mode."""

    user: str
    deltas: list[ServedDelta] = field(default_factory=list)
    default: list[str] = field(default_factory=list)  # names; a request without cmc_deltas gets these
    token_maps: list[str] = field(default_factory=list)
    combine: str | None = None
    dtype: str = "auto"  # of the user model and the deltas: auto is float32 on CPU, bfloat16 on GPU (cmc's rule)
    calibrated: dict = field(default_factory=dict)  # name -> the strength `cmc calibrate` recorded for this user

    def __post_init__(self) -> None:
        self.deltas = [d if isinstance(d, ServedDelta) else ServedDelta(**d) for d in self.deltas]
        names = [d.name for d in self.deltas]
        for n in names:
            if names.count(n) > 1:
                raise ConfigError(f"two deltas are named '{n}'; name them apart: --delta NAME=PATH[:ALPHA]")
            if not n or any(c in n for c in ":=,") or n != n.strip():
                raise ConfigError(f"delta name '{n}' must be non-empty, without ':', '=', ',' or outer spaces")
        for d in self.deltas:
            if d.alpha is not None and d.alpha != AUTO:
                check_alpha_value(d.alpha, f"--delta {d.name}: alpha")
        unknown = [n for n in self.default if n not in names]
        if unknown:
            raise ConfigError(f"default delta '{unknown[0]}' is not one of the served deltas ({', '.join(names) or 'none'})")
        check_combine(self.combine, optional=True)
        check_dtype(self.dtype)

    @classmethod
    def from_cli(cls, user: str, deltas: list[str], alpha: float, token_maps: list[str], combine: str | None,
                 dtype: str) -> "ServeConfig":
        """`--delta [NAME=]PATH[:ALPHA]`: NAME defaults to the directory's name; every delta is a default."""
        served = []
        for text in deltas:
            name, sep, rest = str(text).partition("=")
            if not sep or "/" in name:
                name, rest = "", str(text)
            spec = DeltaSpec.parse(rest)
            if not spec.path.is_dir():
                raise ConfigError(f"--delta {text}: {spec.path} is not a delta directory; train one with `cmc train`")
            served.append(ServedDelta(name or spec.path.resolve().name, str(spec.path.resolve()),
                                      alpha if spec.alpha is None else spec.alpha))
        if alpha is not None:
            check_alpha_value(alpha, "--alpha")
        return cls(user=user, deltas=served, default=[d.name for d in served],
                   token_maps=[str(Path(p).resolve()) for p in token_maps], combine=combine, dtype=dtype)

    def to_env(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def from_env(cls) -> "ServeConfig":
        text = os.environ.get(ENV)
        if not text:
            raise ConfigError(f"{ENV} is not set: start the server with `cmc serve`, or set it with "
                              "cmc_cli.serve.configure(...) before creating vllm.LLM")
        try:
            return cls(**json.loads(text))
        except (TypeError, ValueError) as e:
            raise ConfigError(f"{ENV} is not a cmc serve description ({e}); set it with cmc_cli.serve.configure") from None

    def alphas(self) -> dict[str, float]:
        return {d.name: d.alpha for d in self.deltas}

    def selection(self, extra_args: dict | None) -> tuple[dict[str, float], str | None]:
        """A request's deltas {name: alpha} and its cmc_prompt (None: the request's own prompt), from its
        vllm_xargs; a ValueError with one line naming the field on bad input (vLLM answers it with HTTP 400).
        check_prompt_logprobs refuses prompt logprobs beside deltas."""
        args = dict(extra_args or {})
        unknown = sorted(k for k in args if k.startswith("cmc_") and k not in REQUEST_KEYS)
        if unknown:
            raise ValueError(f"unknown field {unknown[0]} in vllm_xargs; cmc reads {', '.join(REQUEST_KEYS)}")
        prompt = args.get("cmc_prompt")
        if prompt is not None and (not isinstance(prompt, str) or not prompt.strip()):
            raise ValueError("cmc_prompt must be the prompt text the deltas read (a non-empty string)")
        known = self.alphas()
        if "cmc_deltas" not in args:
            return {n: known[n] for n in self.default}, prompt
        given = args["cmc_deltas"]
        if isinstance(given, str):
            given = [given] if given.strip() else []
        if not isinstance(given, list) or not all(isinstance(x, str) for x in given):
            raise ValueError(f"cmc_deltas must be a list of 'NAME' or 'NAME:ALPHA' strings, got {json.dumps(given)}")
        out: dict[str, float] = {}
        for item in given:
            name, sep, tail = item.strip().partition(":")
            if name not in known:
                raise ValueError(f"cmc_deltas: unknown delta '{name}'; this server has {', '.join(known) or 'no deltas'}")
            if name in out:
                raise ValueError(f"cmc_deltas: delta '{name}' is given twice")
            a = parse_alpha(tail, f"cmc_deltas: the alpha of '{name}'") if sep else known[name]
            if a == AUTO:
                if name not in self.calibrated:
                    raise ValueError(f"cmc_deltas: delta '{name}' has no calibrated strength for this model; run "
                                     "`cmc calibrate` for it, or give a number")
                a = self.calibrated[name]
            out[name] = a
        return out, prompt


def check_prompt_logprobs(deltas: dict[str, float], prompt_logprobs) -> None:
    """vLLM computes prompt logprobs (and `echo` with `logprobs`) from the model's own logits, before any logits
    processor: with deltas they would silently score the model alone. Refused (HTTP 400) unless every delta of
    the request is off; the sampled tokens' logprobs do include the deltas (cmc serve runs vLLM with
    --logprobs-mode processed_logprobs)."""
    if prompt_logprobs is not None and any(a != 0 for a in deltas.values()):
        raise ValueError("prompt logprobs (echo with logprobs) would be the user model's alone: vLLM computes them "
                         "before cmc's deltas; score text with the deltas by `cmc eval general` (or tofu), or send "
                         "cmc_deltas: [] to score the model alone")
