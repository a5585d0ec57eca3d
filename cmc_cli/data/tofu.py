"""TOFU evaluation sets (JSON list or JSONL): `question`, `answer`, and for the truth ratio
`paraphrased_answer` and `perturbed_answer` (a list of wrong answers)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from cmc_cli.data.records import DataError, read_records, require_text

SET_KINDS = ("forget", "retain", "real_authors", "world_facts", "heldout")  # heldout: retain questions a delta never saw


@dataclass(frozen=True)
class TofuItem:
    question: str
    answer: str
    paraphrased: str | None
    perturbed: tuple[str, ...]
    source: str
    keys: tuple[str, ...] = ()  # `key`: the fact a correct answer contains (a string or a list of them)

    def base_answer(self, kind: str) -> str:
        """The correct answer the truth ratio compares against: paraphrased on forget/retain (TOFU),
        the answer itself on real authors / world facts."""
        if kind in ("forget", "retain") and self.paraphrased:
            return self.paraphrased
        return self.answer


def load_tofu_eval(path: str | Path, kind: str) -> list[TofuItem]:
    if kind not in SET_KINDS:
        raise ValueError(f"unknown TOFU set kind {kind!r}")
    out = []
    for line, rec in read_records(path):
        src = f"{path}:{line}"
        q = require_text(path, line, rec, "question")
        a = require_text(path, line, rec, "answer")
        para = rec.get("paraphrased_answer")
        if para is not None and (not isinstance(para, str) or not para.strip()):
            raise DataError(f"{src}: 'paraphrased_answer' must be a non-empty string")
        pert = rec.get("perturbed_answer", [])
        if isinstance(pert, str):
            pert = [pert]
        if not isinstance(pert, list) or not all(isinstance(p, str) and p.strip() for p in pert):
            raise DataError(f"{src}: 'perturbed_answer' must be a list of non-empty strings")
        if kind in ("forget", "retain") and pert and para is None:
            raise DataError(f"{src}: a {kind} item with perturbed answers needs 'paraphrased_answer' for the truth ratio")
        key = rec.get("key", [])
        key = [key] if isinstance(key, str) else key
        if not isinstance(key, list) or not all(isinstance(k, str) and k.strip() for k in key):
            raise DataError(f"{src}: 'key' must be a non-empty string or a list of them")
        out.append(TofuItem(q, a, para, tuple(pert), src, tuple(key)))
    return out


# the TOFU sets an evaluation reports, in order, with their titles
SET_TITLES = {"forget": "Forget", "retain": "Retain", "real_authors": "Real authors", "world_facts": "World facts",
              "heldout": "Held-out"}
