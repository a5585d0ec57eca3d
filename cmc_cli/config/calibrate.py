"""`cmc calibrate` options: CalibrateConfig, checked before anything loads."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from cmc_cli.config.options import check_device, check_user_format
from cmc_cli.errors import ConfigError


@dataclass
class CalibrateConfig:
    """Choose the strength of DELTA on USER (engine/calibrate.py): the template it was trained beside (default:
    the one its cmc.json names), the token map, how many items of each set, and the texts when the ones
    recorded in DELTA/config.yaml are not at hand."""

    delta: str = ""
    user: str = ""
    template: str | None = None
    token_maps: list = field(default_factory=list)
    items: int = 32
    general: str | None = None
    data: str | None = None
    forget: str | None = None
    retain: str | None = None
    user_format: str = "auto"
    device: str = "auto"
    dtype: str = "auto"

    def __post_init__(self) -> None:
        if not self.delta or not Path(self.delta).is_dir():
            raise ConfigError(f"DELTA '{self.delta}' is not a delta directory; give one `cmc train` wrote")
        if not (Path(self.delta) / "cmc.json").is_file():
            raise ConfigError(f"{self.delta} has no cmc.json: not a delta `cmc train` wrote")
        if not self.user:
            raise ConfigError("USER is required: the model to calibrate the delta for")
        if not isinstance(self.items, int) or self.items < 1:
            raise ConfigError(f"--items must be a whole number >= 1, got {self.items}")
        for key in ("general", "data", "forget", "retain"):
            val = getattr(self, key)
            if val is not None and not Path(val).is_file():
                raise ConfigError(f"--{key} {val}: no such file")
        self.token_maps = [Path(p) for p in self.token_maps or []]
        check_user_format(self.user_format)
        check_device(self.device, self.dtype)
