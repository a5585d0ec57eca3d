"""The option vocabularies every layer validates against (the engine computes what they name), the checks
shared by several commands, and the merge of defaults < YAML file < flags."""

from __future__ import annotations

from pathlib import Path

from cmc_cli.config.project import read_yaml_mapping
from cmc_cli.errors import ConfigError

STRATEGIES = ("pm-mined", "min-ed", "exact", "exact-ext", "pm-suppress", "pm-lookahead", "shuffled")  # tokenmaps/
# cmc's default: an exact match, else an extension, never a shorter prefix. Over 3 seeds on the model world an
# idk delta made `other` refuse 0.96 of forget questions through it and 0.03 through the paper's PM-MinED,
# whose prefix rule hands the refusal's boost on ▁I to ĠIron (docs/tokenmaps.md, docs/world.md)
DEFAULT_STRATEGY = "exact-ext"
FALLBACKS = ("none", "min-ed")

COMBINE_MODES = ("log-softmax-template", "sum", "log-softmax-both")  # engine/combine.py computes them
# unlearning objectives (cmc unlearn --method), computed in engine/combine.py:
# method -> (forget term, default retain term). Forget terms: "ascent" = -CE(forget answers) (the paper's
# gradient difference), "refusal" = CE(forget questions -> refusal answers) (TOFU's idk), "npo" = negative
# preference optimisation against the frozen template. Retain terms: "nll" = CE(retain), "kl" =
# KL(template || combined) on retain, None = no retain term.
UNLEARN_METHODS = {
    "grad-diff": ("ascent", "nll"),
    "grad-ascent": ("ascent", None),
    "kl": ("ascent", "kl"),
    "idk": ("refusal", "kl"),
    "npo": ("npo", "nll"),
}
RETAIN_TERMS = ("nll", "kl", "none")
UNLEARN_LOSSES = tuple(UNLEARN_METHODS)
USER_FORMATS = ("auto", "raw", "chat")  # or a format string with {prompt}; auto: a fetched model's own, else raw
DTYPE_NAMES = ("auto", "float32", "fp32", "bfloat16", "bf16", "float16", "fp16")  # engine/devices.py DTYPES
DELTA_PRESETS = ("tiny", "mini", "small", "15m", "42m", "110m")  # engine/delta.py PRESETS: their shapes
TASKS = ("instruct", "unlearn")
TASK_DEFAULTS = {
    # the paper's settings
    "instruct": {"lr": 2e-4, "batch_size": 64, "epochs": 4, "silence": 0.0},
    "unlearn": {"lr": 1e-4, "batch_size": 16, "epochs": 20, "silence": 0.1},
}
# silence (docs/training.md): measured on the world, 3 seeds, idk at alpha 2: weight 0 keeps held-out key accuracy
# at 0.86-0.91, 0.1 at 1.00 with forget refusal 0.93 on `other` (0: 0.96), 1.0 halves the refusals (0.54); for the
# instruction delta any weight tried cost the template's gain (ROUGE-L 0.31 -> 0.18 at 0.1), so it is off there
# The presets sized for the model world (engine/delta.py) need a larger step to move a confident template:
# at the paper's 1e-4 a `tiny` idk delta learned nothing in 140 steps on template-tofu (refusal CE 11.05 -> 11.05);
# at 3e-3 it refuses (docs/training.md)
SMALL_PRESET_LR = {"tiny": 3e-3, "mini": 3e-3, "small": 3e-3}
# idk learns a new answer, not only to lower an old one: with the unlearn defaults (batch 16, 20 epochs = 140
# steps on the world's forget10) a tiny delta made template-tofu refuse 0.00 of forget questions at alpha 1;
# 600 steps at batch 8 made it refuse 0.95 (docs/training.md)
METHOD_DEFAULTS = {"idk": {"batch_size": 8, "epochs": 50}}
DEFAULT_EVAL_LIMIT = 256  # unlearn: examples per set in each evaluation (many batches, never one)


def check_sampling(max_new_tokens, temperature, top_p, top_k, stop=(), suppress=()) -> None:
    """The decoding options of generate and eval, checked once, before any model loads
    (engine/sampling.GenerationConfig calls this too)."""
    import math

    if max_new_tokens <= 0:
        raise ConfigError(f"--max-new-tokens must be positive, got {max_new_tokens}")
    if not (temperature >= 0 and math.isfinite(temperature)):
        raise ConfigError(f"--temperature must be a finite number >= 0, got {temperature}")
    if not 0 < top_p <= 1:
        raise ConfigError(f"--top-p must be in (0, 1], got {top_p}")
    if top_k < 0:
        raise ConfigError(f"--top-k must be >= 0, got {top_k}")
    if any(not s for s in stop):
        raise ConfigError("--stop strings must not be empty")
    if any(not str(s) for s in suppress):
        raise ConfigError("--suppress tokens must not be empty")


def check_user_format(user_format) -> None:
    """--user-format: auto, raw, chat, or a format string with {prompt} (config and the Decoder both check it)."""
    if not isinstance(user_format, str) or (user_format not in USER_FORMATS and "{prompt}" not in user_format):
        raise ConfigError(f"--user-format must be {', '.join(USER_FORMATS)} or a format string containing {{prompt}}, "
                          f"got '{user_format}'")


def check_device(device: str, dtype: str) -> None:
    """--device / --dtype spelled right (whether the device exists is known only when it is used)."""
    import re

    if not isinstance(device, str) or not re.fullmatch(r"auto|cpu|mps|cuda(:\d+)?", device):
        raise ConfigError(f"--device '{device}' is not a device; use auto, cpu, cuda, cuda:N or mps")
    check_dtype(dtype)


def check_dtype(dtype: str) -> None:
    """--dtype: one of DTYPE_NAMES (the one check: configs, serving and engine/devices.pick_dtype)."""
    if dtype not in DTYPE_NAMES:
        raise ConfigError(f"--dtype '{dtype}' is unknown; use one of {', '.join(DTYPE_NAMES)}")


def check_combine(mode: str | None, optional: bool = False) -> None:
    """--combine: one of COMBINE_MODES (None allowed where the deltas' own mode applies); every config and the
    engine's combine functions call this one check."""
    if optional and mode is None:
        return
    if mode not in COMBINE_MODES:
        raise ConfigError(f"--combine must be one of {', '.join(COMBINE_MODES)}, got '{mode}'")


def check_lookahead_k(k, error=ConfigError) -> int:
    """--lookahead-k: a whole number >= 1 (map-vocab's option and TokenMap.build's, which raises TokenMapError)."""
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise error(f"--lookahead-k must be a whole number >= 1, got {k!r}")
    return k


def check_prompt_text(text, where: str) -> None:
    """A prompt must say something and be valid text: an empty one, or bytes that are not UTF-8 (a shell passes
    them through as surrogates), is refused."""
    if not isinstance(text, str) or not text.strip():
        raise ConfigError(f"{where} is empty; give the text to answer")
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as e:
        raise ConfigError(f"{where} holds bytes that are not UTF-8 text (at character {e.start}); pass UTF-8 text") from None


_YAML_TYPES = {"str": (str,), "Path": (str,), "int": (int,), "float": (int, float), "bool": (bool,),
               "list": (list,), "tuple": (list,), "dict": (dict,), "None": (type(None),)}


def _yaml_type_error(annotation, value) -> str | None:
    """None when a YAML value fits the option's annotated type, else the type in words (e.g. "a number or
    null"). Unknown annotations accept anything (the dataclass checks them)."""
    names = [t.strip().split("[")[0] for t in str(annotation).split("|")]
    if any(n not in _YAML_TYPES for n in names):
        return None
    ok = tuple(t for n in names for t in _YAML_TYPES[n])
    if isinstance(value, bool) and "bool" not in names:
        ok = ()
    if isinstance(value, ok):
        return None
    words = {"str": "a string", "Path": "a path", "int": "a whole number", "float": "a number", "bool": "true or false",
             "list": "a list", "tuple": "a list", "dict": "a mapping", "None": "null"}
    return " or ".join(dict.fromkeys(words[n] for n in names))


def _merge_sources(cls, yaml_path: Path | None, flags: dict, what: str):
    """Defaults < YAML file < command-line flags (flags that are None or empty lists were not given)."""
    from dataclasses import fields

    merged: dict = {}
    names = {f.name for f in fields(cls)}
    if yaml_path is not None:
        data = read_yaml_mapping(Path(yaml_path))
        unknown = sorted(set(k.replace("-", "_") for k in data) - names)
        if unknown:
            raise ConfigError(f"{yaml_path}: unknown option(s) {', '.join(unknown)}")
        merged.update({k.replace("-", "_"): v for k, v in data.items()})
        types = {f.name: f.type for f in fields(cls)}
        for k, v in data.items():
            ann = str(types[k.replace("-", "_")])
            if isinstance(v, str) and "float" in ann:  # YAML 1.1 reads 3e-3 (no dot) as a string
                try:
                    v = merged[k.replace("-", "_")] = float(v)
                except ValueError:
                    pass
            want = _yaml_type_error(ann, v)
            if want:
                raise ConfigError(f"{yaml_path}: option '{k}' must be {want}, got {type(v).__name__} {str(v)[:40]!r}")
    merged.update({k: v for k, v in flags.items() if v is not None and v != []})
    try:
        return cls(**merged)
    except TypeError as e:
        raise ConfigError(f"invalid {what} options: {e}") from None
