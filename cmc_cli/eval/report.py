"""Reports of evaluations: a rich table for the terminal, results.json and report.md for files."""

from __future__ import annotations

import math
from pathlib import Path

from rich.table import Table

from cmc_cli import __version__
from cmc_cli.fileio import atomic_write_json, atomic_write_text


def _fmt(x) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "—"
    return f"{x:.0e}" if isinstance(x, float) and 0 < abs(x) < 0.005 else f"{x:.2f}"


def tofu_columns(rows) -> tuple[list[str], list[list[str]]]:
    """Header and cells shaped like the paper's Table 2: RL, P, TR per set, then FQ and MU."""
    from cmc_cli.eval.tofu import SET_TITLES

    kinds = [k for k in SET_TITLES if any(k in r.sets for r in rows)]
    header = ["model"] + [f"{SET_TITLES[k]} {m}" for k in kinds for m in ("RL", "P", "TR")]
    has_fq = any(r.forget_quality is not None for r in rows)
    header += (["FQ"] if has_fq else []) + ["MU"]
    cells = []
    for r in rows:
        line = [r.label]
        for k in kinds:
            s = r.sets.get(k)
            line += [_fmt(s.rouge_l), _fmt(s.prob), _fmt(s.truth_ratio)] if s else ["—"] * 3
        if has_fq:
            line.append(_fmt(r.forget_quality))
        line.append(_fmt(r.model_utility))
        cells.append(line)
    return header, cells


def tofu_table(rows) -> Table:
    """Compact for a terminal: one column per set holding "RL P TR"."""
    header, cells = tofu_columns(rows)
    sets = [h[:-3] for h in header[1::3] if h.endswith(" RL")]
    t = Table(title="TOFU: RL P TR per set (ROUGE-L recall, probability, truth ratio)")
    t.add_column("model")
    for name in sets:
        t.add_column(name, justify="right", no_wrap=True)
    for h in header[1 + 3 * len(sets):]:
        t.add_column(h, justify="right")
    for c in cells:
        grouped = [" ".join(c[1 + 3 * i:4 + 3 * i]) for i in range(len(sets))]
        t.add_row(c[0], *grouped, *c[1 + 3 * len(sets):])
    return t


def tofu_markdown(rows, data: dict, cfg) -> str:
    header, cells = tofu_columns(rows)
    lines = ["# TOFU evaluation", "",
             "RL: ROUGE-L recall of the greedy answer; P: probability; TR: truth ratio; FQ: forget quality "
             "(KS-test p-value against the retain model); MU: model utility (harmonic mean of the non-forget metrics).", "",
             "| " + " | ".join(header) + " |", "|" + "|".join(["---"] + ["---:"] * (len(header) - 1)) + "|"]
    lines += ["| " + " | ".join(c) + " |" for c in cells]
    lines += ["", "Data:", ""]
    lines += [f"- {k}: `{v['path']}` ({v['n']} items, sha256 {v['sha256'][:12]})" for k, v in data.items()]
    lines += ["", f"Settings: user format `{cfg.user_format}`, greedy, {cfg.max_new_tokens} new tokens, "
              f"alpha {cfg.alpha:g} unless given per delta; cmc {__version__}.", ""]
    return "\n".join(lines)


def write_tofu_report(out: Path, rows, data: dict, cfg) -> None:
    atomic_write_json(out / "results.json", {"format": "cmc-eval-tofu/1", "cmc_version": __version__,
                                             "data": data, "rows": [r.as_dict() for r in rows]})
    atomic_write_text(out / "report.md", tofu_markdown(rows, data, cfg))
