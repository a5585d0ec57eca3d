"""Read JSON / JSONL record files; every error names the file and line."""

from __future__ import annotations

import json
from pathlib import Path

from cmc_cli.errors import DataError

__all__ = ["DataError", "read_records", "read_utf8", "require_text"]


def read_utf8(path: Path) -> str:
    """A text file's contents; one-line errors name the file (and the line of a byte that is not UTF-8)."""
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        line = e.object[:e.start].count(b"\n") + 1
        raise DataError(f"{path}:{line}: not UTF-8 text (byte {e.object[e.start:e.start + 1]!r}); save the file as UTF-8") from None
    except OSError as e:
        raise DataError(f"cannot read {path}: {e.strerror or e}") from None


def read_records(path: str | Path) -> list[tuple[int, dict]]:
    """(line number, record) pairs from a JSON list or a JSONL file."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"data file {path} does not exist")
    text = read_utf8(path)
    stripped = text.lstrip()
    if stripped.startswith("["):
        try:
            data = json.loads(text)
        except json.JSONDecodeError as e:
            raise DataError(f"{path}:{e.lineno}: malformed JSON ({e.msg})") from None
        out = []
        # approximate line numbers for list items: the line each object starts on
        decoder = json.JSONDecoder()
        pos = text.index("[") + 1
        for item in data:
            while pos < len(text) and text[pos] in " \t\r\n,":
                pos += 1
            line = text.count("\n", 0, pos) + 1
            _, end = decoder.raw_decode(text, pos)
            pos = end
            out.append((line, item))
    else:
        out = []
        for n, line in enumerate(text.splitlines(), 1):
            if not line.strip():
                continue
            try:
                out.append((n, json.loads(line)))
            except json.JSONDecodeError as e:
                raise DataError(f"{path}:{n}: malformed JSON ({e.msg})") from None
    for n, rec in out:
        if not isinstance(rec, dict):
            raise DataError(f"{path}:{n}: expected a JSON object, got {type(rec).__name__}")
    if not out:
        raise DataError(f"{path} holds no records; give a JSON list or JSON lines of objects")
    return out




def require_text(path, line: int, rec: dict, key: str, allow_empty: bool = False) -> str:
    if key not in rec:
        raise DataError(f"{path}:{line}: missing field '{key}'")
    val = rec[key]
    if not isinstance(val, str):
        raise DataError(f"{path}:{line}: field '{key}' must be a string, got {type(val).__name__}")
    if not allow_empty and not val.strip():
        raise DataError(f"{path}:{line}: field '{key}' is empty")
    try:
        val.encode("utf-8")
    except UnicodeEncodeError as e:  # a JSON escape of a lone surrogate (\udcff): no tokenizer can read it
        raise DataError(f"{path}:{line}: field '{key}' holds a character that is not valid text (a lone surrogate "
                        f"at {e.start}); fix the record") from None
    return val
