"""The project file `cmc.yaml`: named models (path, adapter), found in the working directory or $CMC_CONFIG."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

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
    import yaml  # here, not at import: `cmc --help` reads no YAML

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
