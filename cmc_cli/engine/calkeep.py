"""What a calibration keeps beside its delta for the next user of the same delta and template.

Two things in a calibration depend on the delta, its template and the calibration texts, never on the user:

    calibration-texts.json     the general texts the template samples for the off-target budget
    calibration-template.json  the template's side of the rule (engine/calibrate.py): template + delta's objective
                               NLL and greedy hits at alpha 0 and 1, its greedy hits on the retain answers and the
                               general text, and its behaviour-scan value (refusal rate / ROUGE-L)

On 2 cores they are much of a calibration's time when the template is the larger model (Gemma-3-270M's side of
a SmolLM2 calibration: ~30 of ~50 s). With both kept, the template is not even loaded (LazyTemplate). Each file is
keyed by everything its values depend on (the delta's and the template's weights, the texts, the prompt format,
dtype and device, the scan sizes, cmc's version); a key that does not match, or a damaged file, is measured again
and rewritten (atomically). The values are the ones measuring again gives: a test compares them.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
from dataclasses import dataclass, field
from pathlib import Path

log = logging.getLogger(__name__)

KEPT_TEXTS = "calibration-texts.json"
KEPT_TEMPLATE = "calibration-template.json"
SIDE_FORMAT = "cmc-calibration-template/1"


@dataclass
class LazyTemplate:
    """A template given by reference: loaded (once) only when something kept beside the delta does not fit."""

    ref: str
    dtype: object
    device: str = "cpu"
    on_load: object = None  # called with a message before loading (the CLI's phase line)
    model: object = None
    path: Path | None = field(init=False)  # resolved once, without loading

    def __post_init__(self):
        from cmc_cli.refs import resolve

        self.path = resolve(self.ref).path

    def get(self):
        if self.model is None:
            from cmc_cli.engine.models import load_lm

            if self.on_load is not None:
                self.on_load(f"loading template {self.ref}")
            self.model = load_lm(self.ref, dtype=self.dtype, device=self.device)
        return self.model


def loaded(template):
    """The template's LoadedModel (loading a LazyTemplate)."""
    return template.get() if isinstance(template, LazyTemplate) else template


def _placement(template) -> tuple[str, str]:
    """(dtype, device type) the template runs in, without loading it."""
    if isinstance(template, LazyTemplate):
        return str(template.dtype), template.device.split(":")[0]
    p = next(template.model.parameters())
    return str(p.dtype), p.device.type


def _read(path: Path, key: dict) -> dict | None:
    if not path.is_file():
        return None
    try:
        kept = json.loads(path.read_text(encoding="utf-8"))
        if isinstance(kept, dict) and kept.get("key") == key:
            return kept
    except (OSError, ValueError):
        log.info("%s is damaged: measured again and rewritten", path)
    return None


def _write(path: Path, key: dict, values: dict) -> None:
    from cmc_cli.fileio import atomic_write_json

    try:
        atomic_write_json(path, {"key": key, **values})
    except OSError as e:
        log.warning("cannot keep %s (%s); it is measured again next time", path, e)


def template_fingerprint(delta_dir: Path, template) -> str:
    """The template's vocabulary fingerprint: the one the delta records (its tokenizer is the template's), else
    the loaded template's."""
    from cmc_cli.engine.models import read_delta_meta

    fp = read_delta_meta(Path(delta_dir)).get("template", {}).get("fingerprint")
    return fp if isinstance(fp, str) and fp else loaded(template).vocab.fingerprint


def budget_texts(template, n: int, path: str | None, seed: int, keep: Path | None = None,
                 fingerprint: str | None = None) -> list[str]:
    """The general text of the off-target budget: `path`'s first paragraphs, else `n` texts the template samples,
    kept in `keep` (DELTA/calibration-texts.json) for the next user of the same delta and template.
    fingerprint: the template's vocabulary fingerprint when known without loading it."""
    from cmc_cli.data.general import read_plain_text
    from cmc_cli.engine.calibrecord import weights_fingerprint

    if path:
        return read_plain_text(path)[:n]
    keep = keep if template.path is not None else None  # a template built in memory: nothing identifies it
    key = {"template": fingerprint or loaded(template).vocab.fingerprint, "weights": weights_fingerprint(template.path),
           "n": n, "seed": seed + 1000, "length": 48}
    kept = _read(keep, key) if keep is not None else None
    if kept is not None and isinstance(kept.get("texts"), list):
        return [str(t) for t in kept["texts"]]
    from cmc_cli.engine.general import sample_ids

    tpl = loaded(template)
    device = next(tpl.model.parameters()).device
    ids = sample_ids(tpl.model, tpl.tokenizer, n, key["length"], key["seed"], device)
    texts = [" ".join(t.split()) for t in (tpl.tokenizer.decode(r, skip_special_tokens=True) for r in ids.tolist())]
    texts = [t for t in texts if len(t.split()) > 5]
    if keep is not None:
        _write(keep, key, {"texts": texts})
    return texts


def side_key(delta_dir: Path, template, texts, fmt: str) -> dict:
    """Everything the template's side depends on."""
    from cmc_cli import __version__
    from cmc_cli.engine.calibrecord import weights_fingerprint
    from cmc_cli.engine.calscan import ANSWER_ITEMS, ANSWER_TOKENS, REFUSAL_ITEMS

    dtype, device = _placement(template)
    digest = hashlib.sha256(json.dumps(dataclasses.asdict(texts), sort_keys=True).encode()).hexdigest()
    return {"format": SIDE_FORMAT, "delta_weights": weights_fingerprint(delta_dir),
            "template_vocab": template_fingerprint(delta_dir, template), "template_weights": weights_fingerprint(template.path),
            "dtype": dtype, "device": device, "prompt_format": fmt, "texts": digest,
            "scan": [texts.scan, REFUSAL_ITEMS, ANSWER_ITEMS, ANSWER_TOKENS], "cmc_version": __version__}


def template_side(delta_dir: Path, template, texts, fmt: str, delta_lm, measure_side) -> tuple[dict, bool]:
    """({"fit", "top1", "hits", "target"}, kept): the template's side, from DELTA/calibration-template.json when
    its key matches, else measure_side(template LoadedModel) (engine/calibrate.py) and kept."""
    path = Path(delta_dir) / KEPT_TEMPLATE
    if template.path is None:  # a model built in memory: nothing identifies its weights, so nothing is kept
        return measure_side(loaded(template), delta_lm), False
    key = side_key(delta_dir, template, texts, fmt)
    kept = _read(path, key)
    if kept is not None and all(k in kept for k in ("fit", "top1", "hits", "target")):
        return {k: kept[k] for k in ("fit", "top1", "hits", "target")}, True
    side = measure_side(loaded(template), delta_lm)
    _write(path, key, side)
    return side, False
