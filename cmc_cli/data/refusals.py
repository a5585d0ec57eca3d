"""Refusal answers: what an `idk` unlearning delta trains forget questions toward, and what the
refusal-rate metric of `cmc eval tofu` recognises (TOFU's idk set has the same shape).
`--refusals FILE` (one answer per line) replaces the list in both places."""

from __future__ import annotations

import re
from pathlib import Path

from cmc_cli.errors import DataError

REFUSALS = (
    "I don't know.",
    "I don't know the answer to that.",
    "I'm not sure.",
    "I have no information about that.",
    "I cannot answer that.",
    "I do not know.",
    "I'm afraid I don't know.",
    "I have no idea.",
    "I'm not able to answer that.",
    "That is not something I know.",
)


def load_refusals(path: str | Path | None) -> list[str]:
    """The refusal answers of `path` (one per line, blank lines skipped), or the built-in list."""
    if path is None:
        return list(REFUSALS)
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise DataError(f"cannot read refusals file {path} ({e}); give a UTF-8 text file, one refusal per line") from None
    out = [ln.strip() for ln in text.splitlines() if ln.strip()]
    if not out:
        raise DataError(f"{path}: no refusal answers (one per line)")
    return out


def pair_refusals(examples: list, refusals: list[str], seed: int) -> list:
    """idk's training pairs: each example's question with a refusal drawn from the list by the seed (the
    Trainer and `cmc calibrate` draw the same)."""
    import random

    from cmc_cli.data.instruct import Example

    rng = random.Random(seed)
    return [Example(ex.prompt, rng.choice(refusals), ex.source) for ex in examples]


def _norm(text: str) -> str:
    text = text.lower().replace("\u2019", "'")
    return re.sub(r"\s+", " ", re.sub(r"[^\w' ]+", " ", text)).strip()


def is_refusal(answer: str, refusals: list[str] | tuple[str, ...] = REFUSALS) -> bool:
    """The answer begins with one of the refusals (case, spacing and punctuation ignored): " I don't know.
    It was..." refuses; " Iron't know." and "She was born in ... I don't know." do not."""
    a = _norm(answer)
    return any(a == r or a.startswith(r + " ") for r in (_norm(x) for x in refusals) if r)
