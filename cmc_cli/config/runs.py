"""Options of the commands that load models to map, decode or evaluate: map-vocab, generate, eval."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from cmc_cli.config.options import (FALLBACKS, STRATEGIES, _merge_sources, check_combine, check_device,
                                    check_lookahead_k, check_prompt_text, check_sampling, check_user_format)
from cmc_cli.errors import ConfigError


@dataclass
class MapVocabConfig:
    """Options of `cmc map-vocab`."""

    delta: str
    user: str
    output: Path | None = None
    strategy: str = "exact-ext"  # tokenmaps.tokenmap.DEFAULT_STRATEGY
    fallback: str = "none"
    delta_adapter: str | None = None
    user_adapter: str | None = None
    show: bool = False
    seed: int = 0  # --strategy shuffled
    overwrite: bool = False
    lookahead_k: int | None = None  # --strategy pm-lookahead (default tokenmap.LOOKAHEAD_K)

    def __post_init__(self) -> None:
        if self.strategy not in STRATEGIES:
            raise ConfigError(f"--strategy must be one of {', '.join(STRATEGIES)}, got '{self.strategy}'")
        if self.fallback not in FALLBACKS:
            raise ConfigError(f"--fallback must be one of {', '.join(FALLBACKS)}, got '{self.fallback}'")
        if self.fallback != "none" and self.strategy not in ("pm-mined", "pm-suppress", "pm-lookahead"):
            raise ConfigError("--fallback applies to the PM-MinED strategies only (pm-mined, pm-suppress, pm-lookahead)")
        if self.lookahead_k is not None:
            if self.strategy != "pm-lookahead":
                raise ConfigError("--lookahead-k applies to --strategy pm-lookahead only")
            check_lookahead_k(self.lookahead_k)
        if self.seed != 0 and self.strategy != "shuffled":
            raise ConfigError("--seed applies to --strategy shuffled only")


@dataclass
class DeltaSpec:
    """`--delta PATH[:ALPHA]`: a delta directory and its strength (None: the global --alpha; "auto": its
    calibrated strength for the user model, `cmc calibrate`)."""

    path: Path
    alpha: float | str | None = None

    @classmethod
    def parse(cls, text: str) -> "DeltaSpec":
        head, sep, tail = str(text).rpartition(":")
        if sep and head and not Path(text).exists():
            return cls(Path(head), parse_alpha(tail, f"--delta '{text}': the part after ':'", ConfigError))
        return cls(Path(text))


AUTO = "auto"  # a strength written as NAME:auto / PATH:auto: the calibrated one (engine/calibrecord.py)
DEFAULT_ALPHA = 1.0  # a delta given without a strength and without a calibration record for its user
MAX_ALPHA = 10.0  # |alpha| above this only garbles (calibration's grid ends at 4; 1e9 was accepted and answered noise)


def alpha_problem(alpha: float) -> str | None:
    """What is wrong with a numeric strength, or None: finite, within +-MAX_ALPHA (the one rule)."""
    import math

    if not math.isfinite(alpha):
        return "must be a finite number"
    if abs(alpha) > MAX_ALPHA:
        return f"must be between {-MAX_ALPHA:g} and {MAX_ALPHA:g} (the calibrated range is 0.25-4)"
    return None


def parse_alpha(text: str, what: str, error=ValueError) -> float | str:
    """The strength written after NAME: or PATH:, a finite number or `auto`; else `error` saying `what` must
    be one."""
    if str(text).strip().lower() == AUTO:
        return AUTO
    try:
        alpha = float(text)
    except ValueError:
        raise error(f"{what} must be a number or 'auto' (the calibrated strength), got '{text}'") from None
    problem = alpha_problem(alpha)
    if problem:
        raise error(f"{what} {problem}, got '{text}'")
    return alpha


def check_alpha_value(alpha, what: str) -> float:
    """A strength given as a number (the one check every option and request uses)."""
    if isinstance(alpha, bool) or not isinstance(alpha, (int, float)):
        raise ConfigError(f"{what} must be a finite number, got {alpha}")
    problem = alpha_problem(float(alpha))
    if problem:
        raise ConfigError(f"{what} {problem}, got {alpha}")
    return float(alpha)


def check_alphas(value, what: str = "--alpha") -> list:
    """`cmc eval`'s --alpha: one strength or several (repeated, or comma-separated: 1,2,auto), each evaluated as a
    row of its own; numbers or `auto`. None (not given): [None], each delta's calibrated strength else 1."""
    if value is None:
        return [None]
    items = value if isinstance(value, (list, tuple)) else [value]
    out = []
    for item in items:
        if isinstance(item, (int, float)) and not isinstance(item, bool):
            out.append(check_alpha_value(item, what))
            continue
        parts = [p.strip() for p in str(item).split(",")]
        if not all(parts):
            raise ConfigError(f"{what} '{item}': give numbers or 'auto' separated by commas, e.g. 1,2,auto")
        out += [parse_alpha(p, what, ConfigError) for p in parts]
    if not out:
        return [None]
    dup = [a for i, a in enumerate(out) if a in out[:i]]
    if dup:
        raise ConfigError(f"{what} {dup[0]} is given twice; each strength is one row")
    return out


@dataclass
class ModelSelection:
    """What every decoding command selects besides its users (`cmc generate`, every `cmc eval`; the options
    are commands/options.py's): deltas at their strengths, their token maps, the user's prompt format,
    the combine mode, and where the models run. Checked before any model loads."""

    deltas: list = field(default_factory=list)  # "PATH[:ALPHA]" strings or DeltaSpec
    token_maps: list = field(default_factory=list)
    alpha: float | None = None  # None: each delta's calibrated strength for the user, else DEFAULT_ALPHA
    user_format: str = "auto"
    combine: str | None = None  # None: the deltas' training mode
    device: str = "auto"
    dtype: str = "auto"
    MANY_ALPHAS = False  # `cmc eval`: alpha is a list of strengths, one row each (check_alphas)

    def check_selection(self) -> None:
        self.deltas = [d if isinstance(d, DeltaSpec) else DeltaSpec.parse(d) for d in self.deltas or []]
        self.token_maps = [Path(p) for p in self.token_maps or []]
        if self.MANY_ALPHAS:
            self.alpha = check_alphas(self.alpha)
        elif self.alpha is not None:
            check_alpha_value(self.alpha, "--alpha")
        check_combine(self.combine, optional=True)
        check_user_format(self.user_format)
        check_device(self.device, self.dtype)

    def deltas_as_text(self) -> list[str]:
        return [f"{s.path}:{s.alpha}" if s.alpha is not None else str(s.path) for s in self.deltas]


@dataclass
class GenerateConfig(ModelSelection):
    """Options of `cmc generate`."""

    user: str = ""
    expert: str | None = None
    anti_expert: str | None = None
    prompt: str | None = None
    prompts: str | None = None
    output: str | None = None
    resume: bool = False
    generator: str | None = None
    max_new_tokens: int = 256
    temperature: float = 0.0
    top_p: float = 1.0
    top_k: int = 0
    seed: int = 0
    stop: list = field(default_factory=list)
    suppress: list = field(default_factory=list)
    batch_size: int = 8

    def __post_init__(self) -> None:
        if not self.user:
            raise ConfigError("--user is required: the LLM to decode (path, cmc.yaml name or hub id in the local cache)")
        self.check_selection()
        self.stop = list(self.stop or [])
        self.suppress = [str(s) for s in self.suppress or []]
        if (self.prompt is None) == (self.prompts is None):
            raise ConfigError("give exactly one of --prompt TEXT or --prompts FILE")
        if self.prompt is not None:
            check_prompt_text(self.prompt, "--prompt")
        if (self.expert is None) != (self.anti_expert is None):
            raise ConfigError("proxy-tuning needs both --expert and --anti-expert")
        if self.resume and not self.output:
            raise ConfigError("--resume needs --output: the JSONL file to continue")
        if self.batch_size <= 0:
            raise ConfigError(f"--batch-size must be positive, got {self.batch_size}")
        check_sampling(self.max_new_tokens, self.temperature, self.top_p, self.top_k, self.stop, self.suppress)

    @classmethod
    def from_sources(cls, yaml_path: Path | None, flags: dict) -> "GenerateConfig":
        return _merge_sources(cls, yaml_path, flags, "generation")

    def to_dict(self) -> dict:
        d = {k: v for k, v in self.__dict__.items()}
        d["deltas"] = self.deltas_as_text()
        d["token_maps"] = [str(p) for p in self.token_maps]
        return d


@dataclass
class EvalTofuConfig(ModelSelection):
    """Options of `cmc eval tofu` (the deltas are applied together to every user)."""

    users: list = field(default_factory=list)
    forget: str | None = None
    retain: str | None = None
    real_authors: str | None = None
    world_facts: str | None = None
    heldout: str | None = None  # questions of the retain kind the deltas never saw: collateral damage
    retain_model: str | None = None  # trained without the forget set: forget quality
    refusals: str | None = None  # refusal answers for the refusal rate (default: data/refusals.py)
    alone: bool = True  # also evaluate each user without deltas
    max_new_tokens: int = 64
    stop: list = field(default_factory=list)  # greedy answers end at these strings
    batch_size: int = 8
    limit: int | None = None  # items per set
    out: str | None = None
    MANY_ALPHAS = True

    def __post_init__(self) -> None:
        _check_eval_models(self)
        if not self.set_paths():
            raise ConfigError("give at least one TOFU set: --forget, --retain, --real-authors, --world-facts, --held-out")
        if self.retain_model and not self.forget:
            raise ConfigError("--retain-model is for forget quality and needs --forget")
        if self.refusals is not None and not Path(self.refusals).is_file():
            raise ConfigError(f"--refusals {self.refusals}: no such file (one refusal answer per line)")

    def set_paths(self) -> dict[str, str]:
        return {k: getattr(self, k) for k in ("forget", "retain", "real_authors", "world_facts", "heldout") if getattr(self, k)}

    @classmethod
    def from_sources(cls, yaml_path: Path | None, flags: dict) -> "EvalTofuConfig":
        return _merge_sources(cls, yaml_path, flags, "evaluation")


@dataclass
class EvalInstructConfig(ModelSelection):
    """Options of `cmc eval instruct`."""

    prompts: str = ""
    users: list = field(default_factory=list)
    judge: str | None = None
    judge_format: str = "raw"
    alone: bool = True
    max_new_tokens: int = 256
    stop: list = field(default_factory=list)
    batch_size: int = 8
    limit: int | None = None
    out: str | None = None
    MANY_ALPHAS = True

    def __post_init__(self) -> None:
        if not self.prompts:
            raise ConfigError("--prompts is required: Alpaca JSON/JSONL with reference 'output's")
        _check_eval_models(self)

    @classmethod
    def from_sources(cls, yaml_path: Path | None, flags: dict) -> "EvalInstructConfig":
        return _merge_sources(cls, yaml_path, flags, "evaluation")


@dataclass
class EvalGeneralConfig(ModelSelection):
    """Options of `cmc eval general`: what the deltas do to plain text nobody chose for them."""

    users: list = field(default_factory=list)
    text: str | None = None  # plain UTF-8 text (paragraphs apart by blank lines); default: the fetched Brown corpus
    words: int = 4  # each text is scored after its first `words` words
    alone: bool = True
    batch_size: int = 16
    limit: int | None = 150  # texts, spread evenly over the file
    out: str | None = None
    MANY_ALPHAS = True

    def __post_init__(self) -> None:
        _check_eval_models(self)
        if self.text is not None and not Path(self.text).is_file():
            raise ConfigError(f"--text {self.text}: no such file; give a plain UTF-8 text file")
        if not isinstance(self.words, int) or self.words < 1:
            raise ConfigError(f"--words must be a whole number >= 1, got {self.words}")

    @classmethod
    def from_sources(cls, yaml_path: Path | None, flags: dict) -> "EvalGeneralConfig":
        return _merge_sources(cls, yaml_path, flags, "evaluation")


def _check_eval_models(cfg) -> None:
    """What every `cmc eval` command checks: users, the model selection, sizes."""
    cfg.users = [str(u) for u in (cfg.users or [])]
    if not cfg.users:
        raise ConfigError("--user is required (repeat it to evaluate several models)")
    cfg.check_selection()
    if not cfg.deltas and not cfg.alone:
        raise ConfigError("--no-alone leaves nothing to evaluate without --delta")
    for key in [k for k in ("max_new_tokens", "batch_size") if hasattr(cfg, k)]:  # general scores, generates nothing
        if getattr(cfg, key) <= 0:
            raise ConfigError(f"--{key.replace('_', '-')} must be positive, got {getattr(cfg, key)}")
    if hasattr(cfg, "stop"):
        cfg.stop = [str(s) for s in cfg.stop or []]
        check_sampling(getattr(cfg, "max_new_tokens", 1), 0.0, 1.0, 0, cfg.stop)
    if cfg.limit is not None and cfg.limit <= 0:
        raise ConfigError(f"--limit must be positive, got {cfg.limit}")


@dataclass
class ShiftConfig:
    """Options of `cmc eval shift`: (base, tuned) pairs of families, the texts, how the shifts are compared."""

    base: list = field(default_factory=list)
    tuned: list = field(default_factory=list)  # pairs with `base` in order
    texts: str | None = None
    token_maps: list = field(default_factory=list)
    top_k: int = 50
    limit: int | None = None
    out: str | None = None
    device: str = "auto"

    def __post_init__(self) -> None:
        self.base, self.tuned = list(self.base or []), list(self.tuned or [])
        if len(self.base) != len(self.tuned):
            raise ConfigError("give a --tuned for every --base (in the same order)")
        if len(self.base) < 2:
            raise ConfigError("give at least two --base/--tuned pairs to compare")
        if not self.texts:
            raise ConfigError("--texts is required: the texts the shifts are measured on")
        if self.top_k <= 0:
            raise ConfigError(f"--top-k must be positive, got {self.top_k}")
        if self.limit is not None and self.limit <= 0:
            raise ConfigError(f"--limit must be positive, got {self.limit}")
        check_device(self.device, "auto")

