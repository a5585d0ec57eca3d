"""Training checkpoints: delta weights, optimizer state and RNG state in safetensors, progress in JSON.

A checkpoint directory is written under a temp name and renamed into place, so the last good
checkpoint is never half-written.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from cmc_cli.errors import CmcError, cause
from cmc_cli.fileio import write_dir_atomically


def tidy_checkpoint_dir(path: Path) -> None:
    """Undo what a run killed inside save_checkpoint left: temp directories `.NAME.*` are removed, and a
    `NAME.old` (the previous checkpoint, set aside in the instant before the new one was renamed in) is put
    back when NAME is missing, else removed. Called under the output's lock (one writer)."""
    path = Path(path)
    if not path.parent.is_dir():
        return
    for tmp in path.parent.glob(f".{path.name}.*"):
        if tmp.is_dir():
            shutil.rmtree(tmp, ignore_errors=True)
    old = path.with_name(path.name + ".old")
    if old.is_dir():
        if path.exists():
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(old, path)


def save_checkpoint(path: Path, delta, optimizer, progress: dict) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tidy_checkpoint_dir(path)

    def fill(tmp: Path) -> None:
        save_file({k: v.detach().contiguous() for k, v in delta.state_dict().items()}, str(tmp / "delta.safetensors"))
        opt = optimizer.state_dict()
        tensors, state_meta = {}, {}
        for pid, st in opt["state"].items():
            for key, val in st.items():
                if torch.is_tensor(val):
                    tensors[f"{pid}.{key}"] = val.detach().contiguous()
                else:
                    state_meta[f"{pid}.{key}"] = val
        tensors["rng.cpu"] = torch.get_rng_state()
        if torch.cuda.is_available():
            for i, s in enumerate(torch.cuda.get_rng_state_all()):
                tensors[f"rng.cuda{i}"] = s
        save_file(tensors, str(tmp / "optimizer.safetensors"))
        (tmp / "progress.json").write_text(json.dumps({
            **progress, "param_groups": opt["param_groups"], "state_scalars": state_meta}, indent=2))

    try:
        write_dir_atomically(path, fill)
    except OSError as e:
        raise CmcError(f"cannot write checkpoint {path}: {e.strerror or e}; the previous checkpoint is kept — free "
                       "space, then rerun with --resume") from None
    return path


def load_checkpoint(path: Path, delta, optimizer) -> dict:
    path = Path(path)
    files = [path / "delta.safetensors", path / "optimizer.safetensors", path / "progress.json"]
    missing = [f.name for f in files if not f.is_file()]
    if missing:
        raise CmcError(f"{path} is not a cmc training checkpoint (missing {', '.join(missing)})")
    try:
        delta.load_state_dict(load_file(str(files[0])))
        tensors = load_file(str(files[1]))
        progress = json.loads(files[2].read_text())
    except Exception as e:
        raise CmcError(f"checkpoint {path} is unreadable ({cause(e)})") from None
    _check_progress(progress, files[2])
    state: dict = {}
    for name, val in tensors.items():
        if name.startswith("rng."):
            continue
        pid, key = name.split(".", 1)
        state.setdefault(int(pid), {})[key] = val
    for name, val in progress.pop("state_scalars").items():
        pid, key = name.split(".", 1)
        state.setdefault(int(pid), {})[key] = val
    try:
        optimizer.load_state_dict({"state": state, "param_groups": progress.pop("param_groups")})
    except (ValueError, KeyError, TypeError) as e:
        raise CmcError(f"checkpoint {path} does not fit this delta's optimizer ({cause(e)}); "
                       "resume with the same --delta, or start a new run") from None
    torch.set_rng_state(tensors["rng.cpu"])
    if torch.cuda.is_available():
        states = [tensors[k] for k in sorted(t for t in tensors if t.startswith("rng.cuda"))]
        if states:
            torch.cuda.set_rng_state_all(states)
    return progress


def _check_progress(progress, path: Path) -> None:
    """An edited or damaged progress.json is refused with what is wrong, before any of it is used."""
    bad = f"{path} is damaged or was edited"
    if not isinstance(progress, dict):
        raise CmcError(f"{bad}: expected a JSON object; restore it or start a new run")
    step = progress.get("step")
    if isinstance(step, bool) or not isinstance(step, int) or step < 0:
        raise CmcError(f"{bad}: 'step' must be a whole number >= 0, found {step!r}; restore it or start a new run")
    for key, kind in (("history", list), ("evaluations", list), ("param_groups", list), ("state_scalars", dict)):
        if key not in progress and key in ("param_groups", "state_scalars"):
            raise CmcError(f"{bad}: '{key}' is missing; restore it or start a new run")
        if key in progress and not isinstance(progress[key], kind):
            raise CmcError(f"{bad}: '{key}' must be a JSON {'list' if kind is list else 'object'}; restore it or start a new run")
    if any(not isinstance(m, dict) for m in progress.get("history", [])):
        raise CmcError(f"{bad}: 'history' must hold one JSON object per step; restore it or start a new run")


# options that may differ between a run and its --resume: where it is written and how it is checkpointed or
# chunked, and the data paths (their contents are hashed and compared instead); every other option shapes the
# run, and a resume that changes one would mix two runs (steps 1-40 under one lr, 41-60 under another)
RESUME_MAY_DIFFER = frozenset({"output", "resume", "overwrite", "device", "checkpoint_every", "loss_chunk",
                               "micro_batch_size", "data", "forget", "retain", "refusals"})


def check_same_run(recorded: dict | None, now: dict, where) -> None:
    """Refuse a --resume whose run-shaping options differ from the ones the checkpoint recorded, naming them."""
    if not isinstance(recorded, dict):
        return  # a checkpoint from before the options were recorded
    diff = [k for k in sorted(now) if k not in RESUME_MAY_DIFFER and k in recorded and recorded[k] != now[k]]
    if diff:
        shown = ", ".join(f"--{k.replace('_', '-')} {recorded[k]!r} (now {now[k]!r})" for k in diff[:4])
        more = f" and {len(diff) - 4} more" if len(diff) > 4 else ""
        raise CmcError(f"cannot resume from {where}: it was run with {shown}{more}; resume with the same options, "
                       "or start a new run in another --output")
