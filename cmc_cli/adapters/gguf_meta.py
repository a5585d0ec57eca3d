"""Read key-values from a GGUF header (scalars, strings and the arrays asked for) without its tensors."""

from __future__ import annotations

import struct
from pathlib import Path

from cmc_cli.errors import TokenizerError

# GGUF value types -> struct format of a scalar
_SCALARS = {0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 6: "<f", 7: "<?", 10: "<Q", 11: "<q", 12: "<d"}
_STRING, _ARRAY = 8, 9


def read_gguf_header(path: str | Path, keys: tuple[str, ...]) -> dict:
    """Values of `keys` from the GGUF key-value section (arrays as lists); stops once all are found."""
    path = Path(path)
    want = set(keys)
    found: dict = {}
    try:
        with path.open("rb") as f:
            if f.read(4) != b"GGUF":
                raise TokenizerError(f"{path} is not a GGUF file (bad magic number); give a .gguf model or vocab file")
            version, = struct.unpack("<I", f.read(4))
            if version < 2:
                raise TokenizerError(f"{path}: GGUF version {version} is too old; convert it with a recent llama.cpp")
            _n_tensors, n_kv = struct.unpack("<QQ", f.read(16))
            for _ in range(n_kv):
                key = _read_str(f)
                vtype, = struct.unpack("<I", f.read(4))
                if key in want and vtype in _SCALARS:
                    found[key] = struct.unpack(_SCALARS[vtype], f.read(struct.calcsize(_SCALARS[vtype])))[0]
                elif key in want and vtype == _STRING:
                    found[key] = _read_str(f)
                elif key in want and vtype == _ARRAY:
                    found[key] = _read_array(f)
                else:
                    _skip(f, vtype)
                if want <= set(found):
                    break
    except (OSError, struct.error, UnicodeDecodeError) as e:
        raise TokenizerError(f"{path}: unreadable or truncated GGUF file ({e})") from None
    return found


def _read_str(f) -> str:
    n, = struct.unpack("<Q", f.read(8))
    return f.read(n).decode("utf-8")


def _read_array(f) -> list:
    etype, count = struct.unpack("<IQ", f.read(12))
    if etype in _SCALARS:
        fmt = _SCALARS[etype]
        return list(struct.unpack(f"<{count}{fmt[1]}", f.read(count * struct.calcsize(fmt))))
    if etype == _STRING:
        return [_read_str(f) for _ in range(count)]
    raise struct.error(f"unsupported GGUF array element type {etype}")


def _skip(f, vtype: int) -> None:
    if vtype in _SCALARS:
        f.seek(struct.calcsize(_SCALARS[vtype]), 1)
    elif vtype == _STRING:
        n, = struct.unpack("<Q", f.read(8))
        f.seek(n, 1)
    elif vtype == _ARRAY:
        etype, count = struct.unpack("<IQ", f.read(12))
        if etype in _SCALARS:
            f.seek(count * struct.calcsize(_SCALARS[etype]), 1)
        else:
            for _ in range(count):
                _skip(f, etype)
    else:
        raise struct.error(f"unknown GGUF value type {vtype}")
