"""Atomic file writes: a temp file in the same folder, then a rename, so nothing is half-written."""

from __future__ import annotations

import json
import os
import secrets
from pathlib import Path

from cmc_cli.errors import CmcError


def _temp_beside(path: Path) -> tuple[int, str]:
    """A new temp file beside `path`, created as open() creates files (0666 less the umask, which the kernel
    applies), where mkstemp would make it private (0600)."""
    while True:
        tmp = path.parent / f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp"
        try:
            return os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666), str(tmp)
        except FileExistsError:
            continue


def atomic_write_bytes(path: str | Path, data: bytes) -> Path:
    """Write `data` to `path` via a temp file and `os.replace`; a failure leaves `path` untouched. The file gets
    the mode a plain open() would give it."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = _temp_beside(path)
    except OSError as e:
        raise CmcError(f"cannot write {path}: {e.strerror or e}; choose a writable output path") from None
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as e:
        Path(tmp).unlink(missing_ok=True)
        raise CmcError(f"cannot write {path}: {e.strerror or e}; choose a writable output path") from None
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def atomic_write_text(path: str | Path, text: str) -> Path:
    return atomic_write_bytes(path, text.encode("utf-8"))


def write_dir_atomically(final: str | Path, fill, mode: int | None = None):
    """Build a directory in a staging directory beside `final` (`fill(staging)` writes it), then swap it in.
    The old `final` is set aside as `final.old` for the instant of the swap, so a kill at any point leaves the
    old or the new directory whole (checkpoint.tidy_checkpoint_dir puts a lone `.old` back). On any failure
    the staging directory is removed and `final` is as it was. Returns what `fill` returns."""
    import shutil
    import tempfile

    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{final.name}.", dir=final.parent))
    try:
        if mode is not None:
            os.chmod(staging, mode)  # mkdtemp makes it private
        result = fill(staging)
        if final.exists():
            old = final.with_name(final.name + ".old")
            if old.exists():
                shutil.rmtree(old)
            os.replace(final, old)
            os.replace(staging, final)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(staging, final)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return result


def atomic_write_json(path: str | Path, obj) -> Path:
    return atomic_write_text(path, json.dumps(obj, indent=2, ensure_ascii=False) + "\n")


def append_jsonl(path: str | Path, records: list[dict]) -> None:
    """Append records as JSON lines in one write, flushed to disk (a run killed later keeps them)."""
    path = Path(path)
    data = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records).encode("utf-8")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "ab") as f:
            start = f.tell()
            try:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            except OSError:
                f.truncate(start)  # no torn record: the file ends with the last whole batch
                raise
    except OSError as e:
        raise CmcError(f"cannot write {path}: {e.strerror or e}; the records before this batch are kept — free space "
                       "or fix the path, then rerun with --resume") from None


def read_jsonl_for_resume(path: str | Path) -> list[tuple[int, dict]]:
    """(line number, record) of a JSONL file that a run appends to. A last line cut by an interruption (a
    JSON object begun but not ended, with no newline after it: cmc writes whole lines) is dropped from
    the file, and only it, with a warning; any other malformed line is an error and the file is left as it is."""
    import logging

    path = Path(path)
    text = path.read_text(encoding="utf-8")
    lines = text.split("\n")
    out, cut = [], None
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:
            if n == len(lines) and line.lstrip().startswith("{"):  # the unterminated last line
                logging.getLogger(__name__).warning("%s:%d is incomplete (interrupted write); it will be redone", path, n)
                cut = len(text) - len(line)
                break
            raise CmcError(f"{path}:{n}: malformed JSON; fix or remove the file, or choose another --output") from None
        if not isinstance(rec, dict):
            raise CmcError(f"{path}:{n}: expected a JSON object; fix or remove the file, or choose another --output")
        out.append((n, rec))
    if cut is not None:
        atomic_write_text(path, text[:cut])
    return out


class OutputLock:
    """An exclusive, non-blocking lock on an output (a file or a directory) for as long as a run writes it:
    a second cmc process writing the same output fails at once with a clear message instead of interleaving
    with the first. A flock on a small `.NAME.lock` file beside the output; the kernel releases it when the
    process ends, however it ends, so a killed run never leaves a stale lock (the empty file stays)."""

    def __init__(self, output: str | Path, option: str = "--output"):
        self.output = Path(output)
        self.option = option
        self.path = self.output.parent / f".{self.output.name}.lock"
        self.fd: int | None = None

    def __enter__(self) -> "OutputLock":
        import fcntl

        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self.fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as e:
            raise CmcError(f"cannot write {self.output}: {e.strerror or e}; choose a writable {self.option} path") from None
        try:
            fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(self.fd)
            self.fd = None
            raise CmcError(f"{self.output} is being written by another cmc process (lock {self.path}); wait for it "
                           f"to finish or choose another {self.option}") from None
        return self

    def __exit__(self, *exc) -> None:
        if self.fd is not None:
            os.close(self.fd)  # releases the flock
            self.fd = None


def sha256_file(path: str | Path) -> str:
    """Hex sha256 of a file's bytes, read in 1 MiB blocks (the GGUFs of `cmc fetch` are hundreds of MB)."""
    import hashlib

    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


EDGE = 1 << 20  # bytes read from each end of a file too large to hash whole


def files_digest(files, whole_up_to: int = 0, seed: bytes = b"") -> str:
    """sha256 over `seed` and, per file in the order given, its name, size and content: whole when at most
    `whole_up_to` bytes, else its first and last MiB (a few MiB read even of a 7 GB model). The one way cmc
    fingerprints files: model weights (engine/calibrecord.py) and tokenizers (adapters/vocabcache.py)."""
    import hashlib

    h = hashlib.sha256(seed)
    for f in files:
        size = Path(f).stat().st_size
        h.update(f"{Path(f).name}\0{size}\0".encode())
        with open(f, "rb") as fh:
            if size <= whole_up_to:
                for block in iter(lambda: fh.read(EDGE), b""):
                    h.update(block)
                continue
            h.update(fh.read(EDGE))
            if size > 2 * EDGE:
                fh.seek(size - EDGE)
                h.update(fh.read(EDGE))
    return h.hexdigest()
