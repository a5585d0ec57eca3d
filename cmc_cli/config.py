"""Configuration: the project file `cmc.yaml` and one validated dataclass per command.

Precedence is always: built-in defaults < YAML file < command-line flags. Validation errors are
plain English and name the option or file at fault.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from cmc_cli.errors import ConfigError

PROJECT_FILE = "cmc.yaml"


@dataclass(frozen=True)
class ModelEntry:
    """A named model in cmc.yaml: `models: {name: {adapter: llama, path: ./models/llama}}`."""

    name: str
    path: Path
    adapter: str | None = None


@dataclass
class ProjectConfig:
    """What cmc.yaml says; empty when there is no such file."""

    source: Path | None = None
    models: dict[str, ModelEntry] = field(default_factory=dict)


def project_file_path() -> Path | None:
    """`$CMC_CONFIG` if set, else ./cmc.yaml if it exists."""
    env = os.environ.get("CMC_CONFIG")
    if env:
        p = Path(env)
        if not p.is_file():
            raise ConfigError(f"CMC_CONFIG points to {p}, which is not a file; fix or unset CMC_CONFIG")
        return p
    p = Path.cwd() / PROJECT_FILE
    return p if p.is_file() else None


def read_yaml_mapping(path: Path) -> dict:
    """Read a YAML file that must hold a mapping; errors name the file and line."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as e:
        raise ConfigError(f"cannot read {path}: {e.strerror or e}") from None
    except UnicodeDecodeError as e:
        raise ConfigError(f"{path} is not a text (UTF-8) YAML file (byte {e.start} is {e.object[e.start:e.start + 1]!r}); "
                          "give a YAML file of options") from None
    if "\x00" in text:
        raise ConfigError(f"{path} holds binary data (a NUL byte); give a YAML file of options")
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f":{mark.line + 1}" if mark is not None else ""
        problem = getattr(e, "problem", None) or str(e).splitlines()[0]
        raise ConfigError(f"{path}{where}: invalid YAML ({problem})") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping of options at the top level, got {type(data).__name__}")
    return data


def load_project_config(path: Path | None = None) -> ProjectConfig:
    path = path if path is not None else project_file_path()
    if path is None:
        return ProjectConfig()
    data = read_yaml_mapping(path)
    unknown = sorted(set(data) - {"models"})
    if unknown:
        raise ConfigError(f"{path}: unknown top-level key(s) {', '.join(unknown)}; allowed: models")
    models: dict[str, ModelEntry] = {}
    raw_models = data.get("models") or {}
    if not isinstance(raw_models, dict):
        raise ConfigError(f"{path}: 'models' must map names to {{adapter, path}}")
    for name, entry in raw_models.items():
        if isinstance(entry, str):
            entry = {"path": entry}
        if not isinstance(entry, dict) or "path" not in entry:
            raise ConfigError(f"{path}: model '{name}' needs a 'path' (and optionally an 'adapter')")
        extra = sorted(set(entry) - {"path", "adapter"})
        if extra:
            raise ConfigError(f"{path}: model '{name}' has unknown key(s) {', '.join(extra)}; allowed: path, adapter")
        p = Path(os.path.expanduser(str(entry["path"])))
        if not p.is_absolute():
            p = path.parent / p
        models[str(name)] = ModelEntry(name=str(name), path=p, adapter=entry.get("adapter"))
    return ProjectConfig(source=path, models=models)


STRATEGIES = ("pm-mined", "min-ed", "exact", "exact-ext", "pm-suppress", "pm-lookahead", "shuffled")  # tokenmaps/tokenmap.py
FALLBACKS = ("none", "min-ed")


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
            if isinstance(self.lookahead_k, bool) or not isinstance(self.lookahead_k, int) or self.lookahead_k < 1:
                raise ConfigError(f"--lookahead-k must be a whole number >= 1, got {self.lookahead_k}")
        if self.seed != 0 and self.strategy != "shuffled":
            raise ConfigError("--seed applies to --strategy shuffled only")


TASKS = ("instruct", "unlearn")
UNLEARN_LOSSES = ("grad-diff", "grad-ascent", "kl", "idk", "npo")  # engine/combine.py UNLEARN_METHODS
TASK_DEFAULTS = {
    # the paper's settings
    "instruct": {"lr": 2e-4, "batch_size": 64, "epochs": 4},
    "unlearn": {"lr": 1e-4, "batch_size": 16, "epochs": 20},
}
# The presets sized for the model world (engine/delta.py) need a larger step to move a confident template:
# at the paper's 1e-4 a `tiny` idk delta learned nothing in 140 steps on template-tofu (refusal CE 11.05 -> 11.05);
# at 3e-3 it refuses (docs/training.md)
SMALL_PRESET_LR = {"tiny": 3e-3, "mini": 3e-3, "small": 3e-3}
# idk learns a new answer, not only to lower an old one: with the unlearn defaults (batch 16, 20 epochs = 140
# steps on the world's forget10) a tiny delta made template-tofu refuse 0.00 of forget questions at alpha 1;
# 600 steps at batch 8 made it refuse 0.95 (docs/training.md)
METHOD_DEFAULTS = {"idk": {"batch_size": 8, "epochs": 50}}
DEFAULT_EVAL_LIMIT = 256  # unlearn: examples per set in each evaluation (many batches, never one)


@dataclass
class TrainConfig:
    """Options of `cmc train` / `cmc unlearn`. `None` means "the task's default" (TASK_DEFAULTS)."""

    task: str = "instruct"
    template: str = ""
    output: str = ""
    delta: str = "tiny"  # a preset (tiny, 15m, 42m, 110m) or a model directory
    data: str | None = None  # instruct: Alpaca JSON/JSONL or chat messages
    forget: str | None = None  # unlearn: TOFU-format forget set
    retain: str | None = None  # unlearn: TOFU-format retain set
    loss: str = "grad-diff"  # unlearn: the method (--method)
    retain_loss: str | None = None  # unlearn: nll | kl | none (default: the method's, combine.UNLEARN_METHODS)
    refusals: str | None = None  # idk: a file of refusal answers, one per line (default: data/refusals.py)
    npo_beta: float = 0.1
    forget_weight: float = 1.0
    retain_weight: float = 1.0
    # unlearn: evaluate forget / retain CE on the whole sets every `eval_every` steps (default: a fifth of
    # the run), stop at the first evaluation whose forget CE reaches `stop_forget_loss`; the delta written
    # is the one evaluated there (or at the end)
    stop_forget_loss: float | None = None
    eval_every: int | None = None
    eval_limit: int | None = DEFAULT_EVAL_LIMIT  # evaluate on the first N examples of each set (None: all)
    combine: str = "log-softmax-template"
    prompt_format: str | None = None  # default: the template adapter's
    max_length: int = 512
    lr: float | None = None
    batch_size: int | None = None
    micro_batch_size: int | None = None  # gradient accumulation when smaller than batch_size
    epochs: int | None = None
    max_steps: int | None = None
    warmup_ratio: float = 0.03
    weight_decay: float = 0.0
    clip: float = 1.0
    seed: int = 0
    device: str = "auto"
    dtype: str = "auto"  # template dtype: bf16 on GPU, fp32 on CPU
    loss_chunk: int = 1024  # positions per chunk of the combined loss
    checkpoint_every: int = 0  # steps; 0 = only at the end (and on Ctrl-C)
    resume: str | None = None
    overwrite: bool = False  # write into a non-empty --output (a finished delta is otherwise never replaced)

    def retain_term(self) -> str | None:
        """The unlearning retain term in use: nll, kl or None."""
        from cmc_cli.engine.combine import UNLEARN_METHODS

        term = self.retain_loss or UNLEARN_METHODS[self.loss][1] or "none"
        return None if term == "none" else term

    def __post_init__(self) -> None:
        import math

        from cmc_cli.engine.combine import COMBINE_MODES, RETAIN_TERMS

        if self.task not in TASKS:
            raise ConfigError(f"task must be one of {', '.join(TASKS)}, got '{self.task}'")
        if self.lr is None and self.delta in SMALL_PRESET_LR:
            self.lr = SMALL_PRESET_LR[self.delta]
        defaults = {**TASK_DEFAULTS[self.task], **(METHOD_DEFAULTS.get(self.loss, {}) if self.task == "unlearn" else {})}
        for key, val in defaults.items():
            if getattr(self, key) is None:
                setattr(self, key, val)
        if self.micro_batch_size is None:
            self.micro_batch_size = self.batch_size
        if not self.template:
            raise ConfigError("--template is required: the frozen template LLM the delta trains beside")
        if not self.output:
            raise ConfigError("--output is required: the directory the delta is written to")
        out = Path(self.output)
        if out.exists() and not out.is_dir():
            raise ConfigError(f"--output {out} is a file; give a directory for the delta")
        if out.is_dir() and any(out.iterdir()) and not self.resume and not self.overwrite:
            what = "a delta" if (out / "cmc.json").is_file() else "files"
            raise ConfigError(f"--output {out} already holds {what}; pass --resume {out} to continue it, --overwrite "
                              "to replace it, or choose another --output")
        if self.task == "instruct" and not self.data:
            raise ConfigError("--data is required for --task instruct (Alpaca JSON/JSONL or chat messages)")
        if self.task == "unlearn" and not self.forget:
            raise ConfigError("--forget is required for --task unlearn (TOFU-format forget set)")
        if self.loss not in UNLEARN_LOSSES:
            raise ConfigError(f"--method must be one of {', '.join(UNLEARN_LOSSES)}, got '{self.loss}'")
        if self.retain_loss is not None and self.retain_loss not in RETAIN_TERMS:
            raise ConfigError(f"--retain-loss must be one of {', '.join(RETAIN_TERMS)}, got '{self.retain_loss}'")
        if self.task == "unlearn" and self.retain_term() is not None and not self.retain:
            raise ConfigError(f"--retain is required for --method {self.loss} (its retain term is "
                              f"{self.retain_term()}); give a retain set or --retain-loss none")
        for opt in ("data", "forget", "retain"):
            val = getattr(self, opt)
            if val is not None and (self.task == "instruct") == (opt == "data"):
                if not Path(val).is_file():
                    what = "a directory, not a data file" if Path(val).is_dir() else "no such file"
                    raise ConfigError(f"--{opt} {val}: {what}; give the path of a JSON/JSONL data file")
        if self.refusals is not None and not Path(self.refusals).is_file():
            raise ConfigError(f"--refusals {self.refusals}: no such file (one refusal answer per line)")
        if self.prompt_format is not None and "{prompt}" not in self.prompt_format:
            raise ConfigError(f"--prompt-format '{self.prompt_format}' has no {{prompt}}: the delta would never see "
                              "the request; write e.g. 'Question: {prompt}\\nAnswer:'")
        if not (self.npo_beta > 0 and math.isfinite(self.npo_beta)):
            raise ConfigError(f"--npo-beta must be a positive number, got {self.npo_beta}")
        for key in ("eval_every", "eval_limit"):
            if getattr(self, key) is not None and getattr(self, key) <= 0:
                raise ConfigError(f"--{key.replace('_', '-')} must be positive, got {getattr(self, key)}")
        if self.stop_forget_loss is not None and not math.isfinite(self.stop_forget_loss):
            raise ConfigError(f"--stop-forget-loss must be a finite number, got {self.stop_forget_loss}")
        if self.combine not in COMBINE_MODES:
            raise ConfigError(f"--combine must be one of {', '.join(COMBINE_MODES)}, got '{self.combine}'")
        for key in ("lr", "batch_size", "micro_batch_size", "epochs", "max_length", "loss_chunk"):
            val = getattr(self, key)
            if not val or not math.isfinite(val) or val <= 0:
                raise ConfigError(f"--{key.replace('_', '-')} must be a positive finite number, got {val}")
        if self.batch_size % self.micro_batch_size:
            raise ConfigError(f"--batch-size {self.batch_size} must be a multiple of --micro-batch-size {self.micro_batch_size}")
        if not 0 <= self.warmup_ratio < 1:
            raise ConfigError(f"--warmup-ratio must be in [0, 1), got {self.warmup_ratio}")
        if self.max_steps is not None and self.max_steps <= 0:
            raise ConfigError(f"--max-steps must be positive, got {self.max_steps}")

    @classmethod
    def from_sources(cls, yaml_path: Path | None, flags: dict) -> "TrainConfig":
        return _merge_sources(cls, yaml_path, flags, "training")

    def to_dict(self) -> dict:
        from dataclasses import asdict

        return asdict(self)


@dataclass
class DeltaSpec:
    """`--delta PATH[:ALPHA]`: a delta directory and its strength (None: the global --alpha)."""

    path: Path
    alpha: float | None = None

    @classmethod
    def parse(cls, text: str) -> "DeltaSpec":
        import math

        head, sep, tail = str(text).rpartition(":")
        if sep and head and not Path(text).exists():
            try:
                alpha = float(tail)
            except ValueError:
                raise ConfigError(f"--delta '{text}': the part after ':' must be a number (PATH[:ALPHA])") from None
            if not math.isfinite(alpha):
                raise ConfigError(f"--delta '{text}': alpha must be a finite number")
            return cls(Path(head), alpha)
        return cls(Path(text))


@dataclass
class GenerateConfig:
    """Options of `cmc generate`."""

    user: str = ""
    deltas: list = field(default_factory=list)  # "PATH[:ALPHA]" strings or DeltaSpec
    token_maps: list = field(default_factory=list)
    alpha: float = 1.0
    expert: str | None = None
    anti_expert: str | None = None
    prompt: str | None = None
    prompts: str | None = None
    output: str | None = None
    resume: bool = False
    generator: str | None = None
    user_format: str = "auto"
    combine: str | None = None
    max_new_tokens: int = 256
    temperature: float = 0.0
    top_p: float = 1.0
    top_k: int = 0
    seed: int = 0
    stop: list = field(default_factory=list)
    suppress: list = field(default_factory=list)
    batch_size: int = 8
    device: str = "auto"
    dtype: str = "auto"

    def __post_init__(self) -> None:
        import math

        from cmc_cli.engine.combine import COMBINE_MODES

        if not self.user:
            raise ConfigError("--user is required: the LLM to decode (path, cmc.yaml name or hub id in the local cache)")
        self.deltas = [d if isinstance(d, DeltaSpec) else DeltaSpec.parse(d) for d in self.deltas or []]
        self.token_maps = [Path(p) for p in self.token_maps or []]
        self.stop = list(self.stop or [])
        self.suppress = [str(s) for s in self.suppress or []]
        if not isinstance(self.alpha, (int, float)) or not math.isfinite(self.alpha):
            raise ConfigError(f"--alpha must be a finite number, got {self.alpha}")
        if (self.prompt is None) == (self.prompts is None):
            raise ConfigError("give exactly one of --prompt TEXT or --prompts FILE")
        if self.prompt is not None:
            check_prompt_text(self.prompt, "--prompt")
        if (self.expert is None) != (self.anti_expert is None):
            raise ConfigError("proxy-tuning needs both --expert and --anti-expert")
        if self.resume and not self.output:
            raise ConfigError("--resume needs --output: the JSONL file to continue")
        if self.combine is not None and self.combine not in COMBINE_MODES:
            raise ConfigError(f"--combine must be one of {', '.join(COMBINE_MODES)}, got '{self.combine}'")
        if self.batch_size <= 0:
            raise ConfigError(f"--batch-size must be positive, got {self.batch_size}")
        check_sampling(self.max_new_tokens, self.temperature, self.top_p, self.top_k, self.stop, self.suppress)

    @classmethod
    def from_sources(cls, yaml_path: Path | None, flags: dict) -> "GenerateConfig":
        return _merge_sources(cls, yaml_path, flags, "generation")

    def to_dict(self) -> dict:
        d = {k: v for k, v in self.__dict__.items()}
        d["deltas"] = [f"{s.path}:{s.alpha}" if s.alpha is not None else str(s.path) for s in self.deltas]
        d["token_maps"] = [str(p) for p in self.token_maps]
        return d


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


@dataclass
class EvalTofuConfig:
    """Options of `cmc eval tofu`."""

    users: list = field(default_factory=list)
    deltas: list = field(default_factory=list)  # applied together to every user
    token_maps: list = field(default_factory=list)
    alpha: float = 1.0
    forget: str | None = None
    retain: str | None = None
    real_authors: str | None = None
    world_facts: str | None = None
    retain_model: str | None = None  # trained without the forget set: forget quality
    refusals: str | None = None  # refusal answers for the refusal rate (default: data/refusals.py)
    alone: bool = True  # also evaluate each user without deltas
    user_format: str = "auto"
    combine: str | None = None
    max_new_tokens: int = 64
    batch_size: int = 8
    limit: int | None = None  # items per set
    out: str | None = None
    device: str = "auto"
    dtype: str = "auto"

    def __post_init__(self) -> None:
        _check_eval_models(self)
        if not any((self.forget, self.retain, self.real_authors, self.world_facts)):
            raise ConfigError("give at least one TOFU set: --forget, --retain, --real-authors, --world-facts")
        if self.retain_model and not self.forget:
            raise ConfigError("--retain-model is for forget quality and needs --forget")
        if self.refusals is not None and not Path(self.refusals).is_file():
            raise ConfigError(f"--refusals {self.refusals}: no such file (one refusal answer per line)")

    def set_paths(self) -> dict[str, str]:
        return {k: getattr(self, k) for k in ("forget", "retain", "real_authors", "world_facts") if getattr(self, k)}

    @classmethod
    def from_sources(cls, yaml_path: Path | None, flags: dict) -> "EvalTofuConfig":
        return _merge_sources(cls, yaml_path, flags, "evaluation")


@dataclass
class EvalInstructConfig:
    """Options of `cmc eval instruct`."""

    prompts: str = ""
    users: list = field(default_factory=list)
    deltas: list = field(default_factory=list)
    token_maps: list = field(default_factory=list)
    alpha: float = 1.0
    judge: str | None = None
    judge_format: str = "raw"
    alone: bool = True
    user_format: str = "auto"
    combine: str | None = None
    max_new_tokens: int = 256
    batch_size: int = 8
    limit: int | None = None
    out: str | None = None
    device: str = "auto"
    dtype: str = "auto"

    def __post_init__(self) -> None:
        if not self.prompts:
            raise ConfigError("--prompts is required: Alpaca JSON/JSONL with reference 'output's")
        _check_eval_models(self)

    @classmethod
    def from_sources(cls, yaml_path: Path | None, flags: dict) -> "EvalInstructConfig":
        return _merge_sources(cls, yaml_path, flags, "evaluation")


def _check_eval_models(cfg) -> None:
    """What every `cmc eval` command checks: users, deltas, alpha, sizes."""
    import math

    cfg.users = [str(u) for u in (cfg.users or [])]
    cfg.deltas = [d if isinstance(d, DeltaSpec) else DeltaSpec.parse(d) for d in cfg.deltas or []]
    cfg.token_maps = [Path(p) for p in cfg.token_maps or []]
    if not cfg.users:
        raise ConfigError("--user is required (repeat it to evaluate several models)")
    if not isinstance(cfg.alpha, (int, float)) or not math.isfinite(cfg.alpha):
        raise ConfigError(f"--alpha must be a finite number, got {cfg.alpha}")
    if not cfg.deltas and not cfg.alone:
        raise ConfigError("--no-alone leaves nothing to evaluate without --delta")
    for key in ("max_new_tokens", "batch_size"):
        if getattr(cfg, key) <= 0:
            raise ConfigError(f"--{key.replace('_', '-')} must be positive, got {getattr(cfg, key)}")
    if cfg.limit is not None and cfg.limit <= 0:
        raise ConfigError(f"--limit must be positive, got {cfg.limit}")
