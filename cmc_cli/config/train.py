"""`cmc train` / `cmc unlearn` options: TrainConfig, checked before anything loads."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from cmc_cli.config.options import (DEFAULT_EVAL_LIMIT, DELTA_PRESETS, METHOD_DEFAULTS, RETAIN_TERMS, SMALL_PRESET_LR,
                                    TASK_DEFAULTS, TASKS, UNLEARN_LOSSES, UNLEARN_METHODS, _merge_sources, check_combine,
                                    check_device)
from cmc_cli.errors import ConfigError


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
    retain_loss: str | None = None  # unlearn: nll | kl | none (default: the method's, config.UNLEARN_METHODS)
    refusals: str | None = None  # idk: a file of refusal answers, one per line (default: data/refusals.py)
    npo_beta: float = 0.1
    forget_weight: float = 1.0
    retain_weight: float = 1.0
    # the silence term (docs/training.md): silence * sum_v (z_v - mean z)^2 of the delta's logits z, per position
    # of the retain answers and of general text (--general FILE, else `general_samples` texts the template
    # samples, `general_length` tokens each); 0 turns it off. Default: the task's (TASK_DEFAULTS)
    silence: float | None = None
    general: str | None = None
    general_samples: int = 64
    general_length: int = 64
    # unlearn: evaluate forget / retain CE on the whole sets every `eval_every` steps (default: a fifth of
    # the run), stop at the first evaluation whose forget CE reaches `stop_forget_loss`; the delta written
    # is the one evaluated there (or at the end)
    stop_forget_loss: float | None = None
    eval_every: int | None = None
    eval_limit: int | None = DEFAULT_EVAL_LIMIT  # evaluate on the first N examples of each set (None: all)
    combine: str = "log-softmax-template"
    prompt_format: str | list[str] | None = None  # one or several (the delta learns each); default: the template's
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

    def prompt_formats(self) -> list[str] | None:
        """The prompt formats asked for (--prompt-format once or repeated), or None: the template's own."""
        if self.prompt_format is None or self.prompt_format == []:
            return None
        return [self.prompt_format] if isinstance(self.prompt_format, str) else list(self.prompt_format)

    def retain_term(self) -> str | None:
        """The unlearning retain term in use: nll, kl or None."""
        term = self.retain_loss or UNLEARN_METHODS[self.loss][1] or "none"
        return None if term == "none" else term

    def __post_init__(self) -> None:
        if self.task not in TASKS:
            raise ConfigError(f"task must be one of {', '.join(TASKS)}, got '{self.task}'")
        self._fill_defaults()
        self._check_files()
        self._check_objective()
        self._check_numbers()
        check_device(self.device, self.dtype)
        if self.delta not in DELTA_PRESETS and not Path(self.delta).is_dir():
            raise ConfigError(f"--delta {self.delta}: neither a preset ({', '.join(DELTA_PRESETS)}) nor a model directory")

    def _fill_defaults(self) -> None:
        """Options left unset take the delta preset's, the task's and the unlearning method's defaults."""
        if self.lr is None and self.delta in SMALL_PRESET_LR:
            self.lr = SMALL_PRESET_LR[self.delta]
        defaults = {**TASK_DEFAULTS[self.task], **(METHOD_DEFAULTS.get(self.loss, {}) if self.task == "unlearn" else {})}
        for key, val in defaults.items():
            if getattr(self, key) is None:
                setattr(self, key, val)
        if self.micro_batch_size is None:
            self.micro_batch_size = self.batch_size

    def _check_files(self) -> None:
        """--template, --output (never an existing delta unless resumed or overwritten) and the data files."""
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
        for opt in ("data", "forget", "retain"):
            val = getattr(self, opt)
            if val is not None and (self.task == "instruct") == (opt == "data") and not Path(val).is_file():
                what = "a directory, not a data file" if Path(val).is_dir() else "no such file"
                raise ConfigError(f"--{opt} {val}: {what}; give the path of a JSON/JSONL data file")
        if self.refusals is not None and not Path(self.refusals).is_file():
            raise ConfigError(f"--refusals {self.refusals}: no such file (one refusal answer per line)")

    def _check_objective(self) -> None:
        """The method, its retain term, the silence term, the prompt format and the combine mode."""
        if self.loss not in UNLEARN_LOSSES:
            raise ConfigError(f"--method must be one of {', '.join(UNLEARN_LOSSES)}, got '{self.loss}'")
        if self.retain_loss is not None and self.retain_loss not in RETAIN_TERMS:
            raise ConfigError(f"--retain-loss must be one of {', '.join(RETAIN_TERMS)}, got '{self.retain_loss}'")
        if self.task == "unlearn" and self.retain_term() is not None and not self.retain:
            raise ConfigError(f"--retain is required for --method {self.loss} (its retain term is "
                              f"{self.retain_term()}); give a retain set or --retain-loss none")
        check_silence(self.silence, self.general, self.general_samples, self.general_length)
        check_prompt_formats(self.prompt_formats())
        check_combine(self.combine)

    def _check_numbers(self) -> None:
        """Every numeric option in its range."""
        import math

        if not (self.npo_beta > 0 and math.isfinite(self.npo_beta)):
            raise ConfigError(f"--npo-beta must be a positive number, got {self.npo_beta}")
        for key in ("eval_every", "eval_limit", "max_steps"):
            if getattr(self, key) is not None and getattr(self, key) <= 0:
                raise ConfigError(f"--{key.replace('_', '-')} must be positive, got {getattr(self, key)}")
        if self.stop_forget_loss is not None and not math.isfinite(self.stop_forget_loss):
            raise ConfigError(f"--stop-forget-loss must be a finite number, got {self.stop_forget_loss}")
        for key in ("lr", "batch_size", "micro_batch_size", "epochs", "max_length", "loss_chunk"):
            val = getattr(self, key)
            if not val or not math.isfinite(val) or val <= 0:
                raise ConfigError(f"--{key.replace('_', '-')} must be a positive finite number, got {val}")
        if self.batch_size % self.micro_batch_size:
            raise ConfigError(f"--batch-size {self.batch_size} must be a multiple of --micro-batch-size {self.micro_batch_size}")
        if not 0 <= self.warmup_ratio < 1:
            raise ConfigError(f"--warmup-ratio must be in [0, 1), got {self.warmup_ratio}")
        for key in ("clip", "weight_decay"):
            val = getattr(self, key)
            if not (math.isfinite(val) and val >= 0):
                raise ConfigError(f"--{key.replace('_', '-')} must be a finite number >= 0 (0: off), got {val}")
        if self.checkpoint_every < 0:
            raise ConfigError(f"--checkpoint-every must be >= 0 (0: at the end and on Ctrl-C), got {self.checkpoint_every}")

    @classmethod
    def from_sources(cls, yaml_path: Path | None, flags: dict) -> "TrainConfig":
        return _merge_sources(cls, yaml_path, flags, "training")

    def to_dict(self) -> dict:
        from dataclasses import asdict

        return asdict(self)


def check_prompt_formats(formats: list[str] | None) -> None:
    """--prompt-format, given once or repeated: each a string with {prompt}, none twice."""
    for f in formats or []:
        if not isinstance(f, str) or "{prompt}" not in f:
            raise ConfigError(f"--prompt-format '{f}' has no {{prompt}}: the delta would never see the request; write "
                              "e.g. 'Question: {prompt}\\nAnswer:'")
    if formats and len(set(formats)) != len(formats):
        raise ConfigError("--prompt-format: the same format is given twice; give each format once")


def check_silence(weight, general, samples: int, length: int) -> None:
    """The silence term's options, checked once (TrainConfig calls this)."""
    import math

    if not isinstance(weight, (int, float)) or not math.isfinite(weight) or weight < 0:
        raise ConfigError(f"--silence must be a finite number >= 0 (0: off), got {weight}")
    if general is not None and not Path(general).is_file():
        what = "a directory, not a text file" if Path(general).is_dir() else "no such file"
        raise ConfigError(f"--general {general}: {what}; give a plain UTF-8 text file (or leave it out: the template's "
                          "own samples are used)")
    for name, val in (("general-samples", samples), ("general-length", length)):
        if not isinstance(val, int) or val <= 0:
            raise ConfigError(f"--{name} must be a positive whole number, got {val}")
