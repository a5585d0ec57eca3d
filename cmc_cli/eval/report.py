"""Reports of evaluations: the rows and columns of their tables, results.json and report.md for files
(the terminal renders the same columns: commands/tables.py)."""

from __future__ import annotations

import math
from pathlib import Path

from cmc_cli import __version__
from cmc_cli.fileio import atomic_write_json, atomic_write_text


def slug(text: str) -> str:
    """A file name for a row label."""
    import re

    return re.sub(r"[^A-Za-z0-9._@-]+", "_", text).strip("_")[:120] or "row"


def _fmt(x) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "—"
    return f"{x:.0e}" if isinstance(x, float) and 0 < abs(x) < 0.005 else f"{x:.2f}"


def tofu_columns(rows) -> tuple[list[str], list[list[str]]]:
    """Header and cells shaped like the paper's Table 2: RL, P, TR per set, then FQ and MU."""
    from cmc_cli.data.tofu import SET_TITLES

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


def behaviour_columns(rows) -> tuple[list[str], list[list[str]]]:
    """Behaviour first: refusal rate and key accuracy of the greedy answers per set, and each delta row's
    paired change in forget refusals against the same user alone (mean over items, 95% bootstrap CI)."""
    from cmc_cli.eval.metrics import paired_bootstrap
    from cmc_cli.data.tofu import SET_TITLES

    kinds = [k for k in SET_TITLES if any(k in r.sets and r.sets[k].refusal is not None for r in rows)]
    key_kinds = [k for k in kinds if any(k in r.sets and r.sets[k].key_accuracy is not None for r in rows)]
    header = (["model"] + [f"{SET_TITLES[k]} refusal" for k in kinds] + [f"{SET_TITLES[k]} key acc." for k in key_kinds])
    alone = {r.user: r for r in rows if not r.deltas}
    paired = "forget" in kinds and any(r.deltas and r.user in alone for r in rows)
    if paired:
        header.append("Δ forget refusal vs alone [95% CI]")
    cells = []
    for r in rows:
        line = [r.label] + [_fmt(r.sets[k].refusal) if k in r.sets else "—" for k in kinds]
        line += [_fmt(r.sets[k].key_accuracy) if k in r.sets else "—" for k in key_kinds]
        if paired:
            a = alone.get(r.user)
            mine, theirs = (x.sets.get("forget") if x else None for x in (r, a))
            if r.deltas and mine and theirs and mine.n == theirs.n:
                m, lo, hi = paired_bootstrap(mine.per_item["refusal"], theirs.per_item["refusal"])
                line.append(f"{m:+.2f} [{lo:+.2f}, {hi:+.2f}]")
            else:
                line.append("")
        cells.append(line)
    return header, cells


def md_table(header: list[str], cells: list[list[str]]) -> list[str]:
    """Markdown table lines: the first column left-aligned, the figures right-aligned."""
    return (["| " + " | ".join(header) + " |", "|" + "|".join(["---"] + ["---:"] * (len(header) - 1)) + "|"]
            + ["| " + " | ".join(c) + " |" for c in cells])


def tofu_markdown(rows, data: dict, cfg) -> str:
    lines = ["# TOFU evaluation", ""]
    b_header, b_cells = behaviour_columns(rows)
    if len(b_header) > 1:
        lines += ["Behaviour (greedy answers): refusal rate (the answer begins with a refusal phrasing) and key "
                  "accuracy (it contains the item's key); the paired change is against the same user alone.", ""]
        lines += md_table(b_header, b_cells) + [""]
    lines += ["Likelihoods and ROUGE. RL: ROUGE-L recall of the greedy answer; P: probability; TR: truth ratio; FQ: "
              "forget quality (KS-test p-value against the retain model); MU: model utility (harmonic mean of the "
              "non-forget metrics).", ""]
    lines += md_table(*tofu_columns(rows))
    lines += ["", "Data:", ""]
    lines += [f"- {k}: `{v['path']}` ({v['n']} items, sha256 {v['sha256'][:12]})" for k, v in data.items()]
    lines += ["", f"Settings: user format `{cfg.user_format}`, greedy, {cfg.max_new_tokens} new tokens, "
              f"alpha {_alpha_text(cfg.alpha)} unless given per delta; cmc {__version__}.", ""]
    return "\n".join(lines)


def write_tofu_report(out: Path, rows, data: dict, cfg) -> None:
    atomic_write_json(out / "results.json", {"format": "cmc-eval-tofu/1", "cmc_version": __version__,
                                             "data": data, "rows": [r.as_dict() for r in rows]})
    atomic_write_text(out / "report.md", tofu_markdown(rows, data, cfg))


def instruct_columns(rows) -> tuple[list[str], list[list[str]]]:
    header = ["model", "n (with ref)", "ref log-lik", "ROUGE-L F", "ROUGE-L R"]
    judged = any(r.win_rate is not None for r in rows)
    if judged:
        header.append("win rate")
    cells = []
    for r in rows:
        line = [r.label, f"{r.n} ({r.n_ref})", _fmt(r.ref_loglik), _fmt(r.rouge_l_f), _fmt(r.rouge_l_recall)]
        if judged:
            line.append(_fmt(r.win_rate))
        cells.append(line)
    return header, cells


def _alpha_text(alpha) -> str:
    return f"{alpha:g}" if alpha is not None else "calibrated (`cmc calibrate`; 1 where none is recorded)"
