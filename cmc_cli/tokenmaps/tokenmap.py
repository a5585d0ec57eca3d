"""The TokenMap artifact: user id -> delta id, saved as safetensors with JSON metadata.

File contract (docs/formats.md):
  tensors   index int64[|V_user|] (-1 = unmapped), kind uint8[|V_user|] (codes in strategies.py)
  metadata  "cmc" -> JSON: format, strategy, fallback, delta / user {name, fingerprint, size},
            counts per kind, cmc version
Loading checks the fingerprints against the tokenizers in use and refuses a mismatch.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from cmc_cli import __version__
from cmc_cli.config import DEFAULT_STRATEGY, STRATEGIES
from cmc_cli.config.options import check_lookahead_k
from cmc_cli.errors import TokenMapError, cause
from cmc_cli.fileio import atomic_write_bytes
from cmc_cli.tokenmaps.strategies import BASE_STRATEGIES, KIND_NAMES, PREFIX, UNMAPPED, map_vocab
from cmc_cli.vocab import Vocab

FORMAT = "cmc-tokenmap/1"
assert STRATEGIES == BASE_STRATEGIES + ("pm-suppress", "pm-lookahead", "shuffled")  # the option set (config) is this
PREFIX_RULES = {"pm-suppress": "suppress", "pm-lookahead": "lookahead"}  # PM-MinED maps with a decode-time rule
LOOKAHEAD_K = 16  # candidates examined per step by the look-ahead (engine/lookahead.py)


@dataclass
class TokenMap:
    index: np.ndarray  # int64 [V_user]
    kind: np.ndarray  # uint8 [V_user]
    meta: dict = field(default_factory=dict)

    # ---- building ---------------------------------------------------------------------------
    @classmethod
    def build(cls, delta: Vocab, user: Vocab, strategy: str = DEFAULT_STRATEGY, fallback: str = "none",
              progress=None, seed: int = 0, lookahead_k: int = LOOKAHEAD_K) -> TokenMap:
        """strategy: one of STRATEGIES. "pm-suppress" is the PM-MinED map whose prefix-mapped user tokens
        receive only the delta's suppressions at decode time (prefix rule "suppress"); "pm-lookahead" the
        PM-MinED map whose prefix-mapped tokens among the user's top `lookahead_k` are scored by the delta's
        shift for their whole string, the others as under "suppress" (prefix rule "lookahead",
        engine/lookahead.py); "shuffled" is the control: the default strategy's targets permuted with `seed`
        (TokenMap.shuffled)."""
        if strategy not in STRATEGIES:
            raise TokenMapError(f"unknown token-map strategy '{strategy}'; one of {', '.join(STRATEGIES)}")
        if strategy in PREFIX_RULES or strategy == "shuffled":
            tm = cls.build(delta, user, "pm-mined" if strategy in PREFIX_RULES else DEFAULT_STRATEGY, fallback, progress)
            if strategy == "shuffled":
                return tm.shuffled(seed)
            tm.meta.update(strategy=strategy, prefix_rule=PREFIX_RULES[strategy])
            if strategy == "pm-lookahead":
                tm.meta["lookahead_k"] = check_lookahead_k(lookahead_k, TokenMapError)
            return tm
        if delta.size == 0:
            raise TokenMapError(f"the delta tokenizer '{delta.name}' has an empty vocabulary")
        if user.size == 0:
            raise TokenMapError(f"the user tokenizer '{user.name}' has an empty vocabulary")
        index, kind = map_vocab(delta, user, strategy=strategy, fallback=fallback, progress=progress)
        tm = cls(index=index, kind=kind)
        tm.meta = {
            "format": FORMAT,
            "strategy": strategy,
            "fallback": fallback,
            "delta": {"name": delta.name, "fingerprint": delta.fingerprint, "size": delta.size,
                      "convention": delta.convention},
            "user": {"name": user.name, "fingerprint": user.fingerprint, "size": user.size,
                     "convention": user.convention},
            "counts": tm.counts(),
            "cmc_version": __version__,
        }
        return tm

    def shuffled(self, seed: int = 0) -> TokenMap:
        """A control: the same mapped user tokens, each sent to a delta token drawn at random (a
        permutation of the mapped targets). Transfer through the real map is the gap to this one."""
        rng = np.random.default_rng(seed)
        index = self.index.copy()
        mapped = np.flatnonzero(index >= 0)
        index[mapped] = index[mapped][rng.permutation(mapped.size)]
        meta = {**self.meta, "strategy": f"shuffled({self.meta.get('strategy')}, seed={seed})"}
        meta.pop("prefix_rule", None)
        meta.pop("lookahead_k", None)
        return TokenMap(index=index, kind=self.kind.copy(), meta=meta)

    def cap_tensor(self):
        """The user ids that receive only suppressions (combine.map_delta_logits), or None for the plain rule:
        the prefix-mapped ones under the "suppress" and "lookahead" rules (the look-ahead lifts the cap of
        the candidates it scores)."""
        if self.meta.get("prefix_rule") not in ("suppress", "lookahead"):
            return None
        import torch

        return torch.from_numpy(self.kind == PREFIX)

    @property
    def lookahead_k(self) -> int:
        return int(self.meta.get("lookahead_k", LOOKAHEAD_K))

    # ---- facts --------------------------------------------------------------------------------
    @property
    def user_size(self) -> int:
        return int(self.index.shape[0])

    def counts(self) -> dict[str, int]:
        c = np.bincount(self.kind, minlength=len(KIND_NAMES))
        return {name: int(c[k]) for k, name in enumerate(KIND_NAMES)}

    def index_tensor(self):
        import torch

        return torch.from_numpy(self.index)

    # ---- file I/O -----------------------------------------------------------------------------
    def to_bytes(self) -> bytes:
        from safetensors.numpy import save

        tensors = {"index": np.ascontiguousarray(self.index, dtype=np.int64),
                   "kind": np.ascontiguousarray(self.kind, dtype=np.uint8)}
        return save(tensors, metadata={"cmc": json.dumps(self.meta, ensure_ascii=False)})

    def save(self, path: str | Path) -> Path:
        return atomic_write_bytes(path, self.to_bytes())

    @classmethod
    def load(cls, path: str | Path, delta: Vocab | None = None, user: Vocab | None = None) -> TokenMap:
        path = Path(path)
        if not path.is_file():
            raise TokenMapError(f"token map {path} does not exist; build it with `cmc map-vocab DELTA USER -o {path}`")
        try:
            data = path.read_bytes()
        except OSError as e:
            raise TokenMapError(f"cannot read token map {path}: {e.strerror or e}") from None
        tm = cls._from_bytes(data, path)
        if delta is not None or user is not None:
            tm.check(delta=delta, user=user, path=path)
        return tm

    @classmethod
    def _from_bytes(cls, data: bytes, path: Path) -> TokenMap:
        from safetensors.numpy import load

        bad = f"token map {path} is corrupt or truncated"
        try:
            tensors = load(data)
            header_len = int.from_bytes(data[:8], "little")
            header = json.loads(data[8:8 + header_len])
            meta = json.loads(header.get("__metadata__", {}).get("cmc", "null"))
        except Exception as e:  # safetensors raises several types for broken files
            raise TokenMapError(f"{bad} ({cause(e, 120)}); rebuild it with `cmc map-vocab`") from None
        if not isinstance(meta, dict) or meta.get("format") != FORMAT:
            raise TokenMapError(f"{path} is not a cmc token map (no '{FORMAT}' metadata); build one with `cmc map-vocab`")
        rule, k = meta.get("prefix_rule"), meta.get("lookahead_k", LOOKAHEAD_K)
        if rule not in (None, "suppress", "lookahead"):
            raise TokenMapError(f"{path} has prefix rule '{rule}', which this cmc does not know; upgrade cmc or rebuild it")
        if rule == "lookahead" and (isinstance(k, bool) or not isinstance(k, int) or k < 1):
            raise TokenMapError(f"{bad}: lookahead_k must be a whole number >= 1, found {k!r}")
        if set(tensors) != {"index", "kind"}:
            raise TokenMapError(f"{bad}: expected tensors 'index' and 'kind', found {sorted(tensors)}")
        index, kind = tensors["index"], tensors["kind"]
        if index.dtype != np.int64 or kind.dtype != np.uint8 or index.ndim != 1 or index.shape != kind.shape:
            raise TokenMapError(f"{bad}: 'index' must be int64[V] and 'kind' uint8[V] of the same length")
        n_user, n_delta = meta["user"]["size"], meta["delta"]["size"]
        if index.shape[0] != n_user:
            raise TokenMapError(f"{bad}: {index.shape[0]} entries but the metadata says {n_user} user tokens")
        idx = index
        if idx.size and (idx.min() < -1 or idx.max() >= n_delta):
            raise TokenMapError(f"{bad}: ids outside the delta vocabulary of {n_delta}")
        if kind.size and int(kind.max()) >= len(KIND_NAMES):
            raise TokenMapError(f"{bad}: unknown kind codes")
        if np.any((idx == -1) != (kind == UNMAPPED)):
            raise TokenMapError(f"{bad}: 'index' and 'kind' disagree on unmapped tokens")
        return cls(index=idx.copy(), kind=kind.copy(), meta=meta)

    def check(self, delta: Vocab | None = None, user: Vocab | None = None, path: Path | str = "token map") -> None:
        """Refuse a map built for other tokenizers than the ones in use."""
        for side, vocab in (("delta", delta), ("user", user)):
            if vocab is None:
                continue
            want = self.meta[side]
            if vocab.fingerprint != want["fingerprint"]:
                raise TokenMapError(
                    f"{path} was built for {side} tokenizer '{want['name']}' ({want['size']} tokens, "
                    f"fingerprint {want['fingerprint'][:12]}), not '{vocab.name}' ({vocab.size} tokens, "
                    f"fingerprint {vocab.fingerprint[:12]}); rebuild it with `cmc map-vocab`")
