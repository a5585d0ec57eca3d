"""`map-vocab` as a library call: resolve both references, load vocabularies, build, save."""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from cmc_cli.config import MapVocabConfig
from cmc_cli.errors import CmcError
from cmc_cli.plugins import adapter_for
from cmc_cli.refs import ModelRef, resolve
from cmc_cli.tokenmaps.strategies import KIND_NAMES, UNMAPPED
from cmc_cli.tokenmaps.tokenmap import TokenMap
from cmc_cli.vocab import Vocab

log = logging.getLogger(__name__)


def load_vocab(ref: ModelRef) -> Vocab:
    adapter = adapter_for(ref)
    log.info("loading tokenizer %s with adapter '%s'", ref.path, adapter.name)
    return adapter.load_vocab(ref)


def default_output(delta_name: str, user_name: str) -> Path:
    return Path("tokenmaps") / f"{delta_name}__{user_name}.safetensors"


@dataclass
class MapVocabResult:
    token_map: TokenMap
    path: Path
    delta: Vocab
    user: Vocab


def map_vocab_files(cfg: MapVocabConfig, progress=None, on_phase=None) -> MapVocabResult:
    """Build the token map of `cfg` and write it atomically; returns what the CLI reports."""
    phase = on_phase or (lambda msg: log.info("%s", msg))
    delta_ref = resolve(cfg.delta, adapter=cfg.delta_adapter)
    user_ref = resolve(cfg.user, adapter=cfg.user_adapter)
    out = Path(cfg.output) if cfg.output else default_output(delta_ref.name, user_ref.name)
    _check_writable(out)
    if out.exists() and not cfg.overwrite:
        raise CmcError(f"{out} already exists; pass --overwrite to replace it, or choose another -o path")
    phase(f"loading delta tokenizer {cfg.delta}")
    delta = load_vocab(delta_ref)
    phase(f"loading user tokenizer {cfg.user}")
    user = load_vocab(user_ref)
    phase(f"mapping {user.size} user tokens onto {delta.size} delta tokens ({cfg.strategy})")
    extra = {"lookahead_k": cfg.lookahead_k} if cfg.lookahead_k is not None else {}
    tm = TokenMap.build(delta, user, strategy=cfg.strategy, fallback=cfg.fallback, progress=progress, seed=cfg.seed,
                        **extra)
    tm.save(out)
    return MapVocabResult(tm, out, delta, user)


def _check_writable(out: Path) -> None:
    """Fail before the slow part when the output cannot be written."""
    if out.is_dir():
        raise CmcError(f"output {out} is a directory; give a file path ending in .safetensors")
    parent = out.parent if str(out.parent) else Path(".")
    probe = parent
    while not probe.exists():
        probe = probe.parent
    if not probe.is_dir() or not os.access(probe, os.W_OK):
        raise CmcError(f"cannot write {out}: {probe} is not a writable directory; choose another -o path")


def sample_mappings(tm: TokenMap, delta: Vocab, user: Vocab, per_kind: int = 3) -> list[tuple[str, int, str, str]]:
    """A few (kind, user id, user piece, delta piece) rows per kind, spread over the vocabulary."""
    rows = []
    for k, name in enumerate(KIND_NAMES):
        ids = np.flatnonzero(tm.kind == k)
        if ids.size == 0:
            continue
        pick = ids[np.linspace(0, ids.size - 1, num=min(per_kind, ids.size)).round().astype(int)]
        for i in dict.fromkeys(pick.tolist()):
            j = int(tm.index[i])
            rows.append((name, i, user.pieces[i], delta.pieces[j] if k != UNMAPPED else "—"))
    return rows
