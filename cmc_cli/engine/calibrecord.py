"""The record of `cmc calibrate`: `DELTA/calibration.json`, one entry per user model and token map, each with
the fingerprints it was measured with (docs/formats.md). A delta given without a strength, or as `:auto`,
takes the entry of its user model (engine/models.load_delta); an entry whose fingerprints no longer match
(the delta retrained, the user model's weights or vocabulary changed, another map) is not used."""

from __future__ import annotations

import json
import logging
from pathlib import Path

from cmc_cli.errors import CmcError
from cmc_cli.fileio import files_digest

log = logging.getLogger(__name__)

RECORD = "calibration.json"
FORMAT = "cmc-calibration/1"
WEIGHT_SUFFIXES = (".safetensors", ".gguf", ".bin", ".pt")


def weights_fingerprint(path: str | Path | None) -> str:
    """sha256 over a model's config.json and, per weight file (sorted), its name, size and first and last MiB:
    changes with any retraining or conversion, and reads a few MiB even of a 7 GB model."""
    if path is None:
        return "unknown"
    path = Path(path)
    files = [path] if path.is_file() else sorted(f for f in path.iterdir() if f.suffix in WEIGHT_SUFFIXES
                                                 or f.name == "config.json")
    return files_digest(files)


def map_identity(token_map) -> dict | str:
    """What a delta's token map is, for the record: "same" (the user's vocabulary), else its strategy and
    both vocabulary fingerprints."""
    if token_map is None:
        return "same"
    meta = token_map.meta
    return {"strategy": meta["strategy"], "delta": meta["delta"]["fingerprint"], "user": meta["user"]["fingerprint"]}


def read_record(delta_dir: Path) -> list[dict]:
    path = Path(delta_dir) / RECORD
    if not path.is_file():
        return []
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise CmcError(f"{path} is damaged ({e}); delete it and run `cmc calibrate` again") from None
    if not isinstance(data, dict) or data.get("format") != FORMAT or not isinstance(data.get("entries"), list):
        raise CmcError(f"{path} is not a cmc calibration record ({FORMAT}); delete it and run `cmc calibrate` again")
    return data["entries"]


def write_entry(delta_dir: Path, entry: dict) -> Path:
    """Add `entry`, replacing the one for the same user vocabulary, user weights and map (atomic write)."""
    from cmc_cli.fileio import atomic_write_json

    key = _key(entry)
    entries = [e for e in read_record(delta_dir) if _key(e) != key] + [entry]
    path = Path(delta_dir) / RECORD
    atomic_write_json(path, {"format": FORMAT, "entries": entries})
    return path


def _key(entry: dict) -> tuple:
    u = entry.get("user", {})
    return (u.get("vocab"), u.get("weights"), json.dumps(entry.get("map"), sort_keys=True))


def find(delta_dir: Path, delta_weights: str, user_vocab: str, user_weights: str, token_map) -> tuple[dict | None, str]:
    """The entry recorded for this delta, user and map, or (None, why none fits)."""
    entries = read_record(delta_dir)
    if not entries:
        return None, f"{Path(delta_dir) / RECORD} does not exist"
    ident = map_identity(token_map)
    same_user = [e for e in entries if e.get("user", {}).get("vocab") == user_vocab]
    if not same_user:
        return None, "no entry for this user model's vocabulary"
    same_weights = [e for e in same_user if e["user"].get("weights") == user_weights]
    if not same_weights:
        return None, "the user model's weights differ from the ones it was calibrated with"
    fits = [e for e in same_weights if e.get("map") == ident]
    if not fits:
        return None, "it was calibrated through another token map"
    if fits[-1].get("delta_weights") != delta_weights:
        return None, "the delta's weights changed since it was calibrated"
    return fits[-1], ""
