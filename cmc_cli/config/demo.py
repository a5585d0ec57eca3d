"""`cmc demo` options: DemoConfig (zoo/demo.py runs it), checked before the world is built."""

from __future__ import annotations

import math
from dataclasses import dataclass

from cmc_cli.config.options import DEFAULT_STRATEGY, STRATEGIES, UNLEARN_LOSSES
from cmc_cli.errors import ConfigError

# for `other`, besides the shuffled control (cmc's default's targets permuted): cmc's default and the paper's;
# `--maps` adds others (exact, pm-suppress, min-ed)
MAPS = ("exact-ext", "pm-mined")
CONTROL = "shuffled"


@dataclass
class DemoConfig:
    """Options of `cmc demo`: the world's size, the seeds, the two deltas' settings and the maps applied."""

    size: str = "full"
    root: str | None = None  # the world's directory (default: the cache)
    out: str | None = None  # where deltas, maps and the report go (default: <world>/demo)
    jobs: int | None = None
    seeds: int = 3  # deltas trained per task, seeds seed .. seed + seeds - 1
    seed: int = 0
    # the deltas' strengths: None = calibrated for each model, map and seed (engine/calibrate.py); a number
    # fixes it for every model (before calibration the demo used 2.0 for unlearning and 1.0 for instruction)
    alpha: float | None = None
    instruct_alpha: float | None = None  # the instruction delta's (and its proxy-tuning row's; 1 when calibrated)
    delta: str = "tiny"  # the instruction delta's preset
    unlearn_delta: str = "mini"  # the unlearning delta's preset
    method: str = "idk"  # cmc unlearn --method
    silence: float | None = None  # both deltas' silence weight (None: cmc train's default)
    # unlearning: None = the world size's setting (UNLEARN_SETTINGS)
    unlearn_lr: float | None = None
    unlearn_batch: int | None = None
    unlearn_max_steps: int | None = None
    unlearn_retain_weight: float | None = None
    stop_forget_loss: float = 8.0  # methods other than idk: stop once the whole forget set's CE reaches it
    instruct_lr: float = 3e-3
    instruct_epochs: int = 20
    instruct_batch: int = 8
    instruct_max_steps: int = 300
    maps: tuple[str, ...] = MAPS  # token-map strategies applied to `other` (the shuffled control always)
    eval_limit: int = 40  # items per evaluation set
    max_new_tokens: int = 24
    forget_split: int = 10

    def __post_init__(self):
        for name, a in (("--alpha", self.alpha), ("--instruct-alpha", self.instruct_alpha)):
            if a is not None and not math.isfinite(a):
                raise ConfigError(f"{name} must be a finite number, got {a}")
        for name in ("seeds", "eval_limit", "max_new_tokens"):
            if getattr(self, name) <= 0:
                raise ConfigError(f"--{name.replace('_', '-')} must be positive, got {getattr(self, name)}")
        if self.method not in UNLEARN_LOSSES:
            raise ConfigError(f"--method must be one of {', '.join(UNLEARN_LOSSES)}, got '{self.method}'")
        self.maps = tuple(dict.fromkeys([DEFAULT_STRATEGY, "pm-mined", *self.maps]))  # the headline compares these two
        bad = [m for m in self.maps if m not in STRATEGIES or m == CONTROL]
        if bad:
            raise ConfigError(f"--maps: unknown strategy {bad[0]!r}; choose among "
                              f"{', '.join(s for s in STRATEGIES if s != CONTROL)} (the shuffled control is always added)")
        if self.size not in UNLEARN_SETTINGS:
            raise ConfigError(f"--size must be one of {', '.join(UNLEARN_SETTINGS)}, got '{self.size}'")


# What the trial of issue 17 used (tiny preset, lr 3e-3, batch 8, 300 steps), per world size
UNLEARN_SETTINGS = {
    "full": {"unlearn_lr": 3e-3, "unlearn_batch": 8, "unlearn_max_steps": 300, "unlearn_retain_weight": 1.0},
    "reduced": {"unlearn_lr": 3e-3, "unlearn_batch": 4, "unlearn_max_steps": 150, "unlearn_retain_weight": 1.0},
}
