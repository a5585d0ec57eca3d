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


SETTINGS = "settings.json"


def check_settings(out: Path, settings: dict, flags: dict[str, str]) -> None:
    """Per-item records in --out are resumed only under the settings they were made with: the first run writes
    `settings`, a later one with other values is refused naming the option (`flags`: key -> option name)."""
    import json

    from cmc_cli.errors import CmcError
    from cmc_cli.fileio import atomic_write_json

    path = out / SETTINGS
    if path.is_file():
        try:
            before = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as e:
            raise CmcError(f"{path} is unreadable ({e}); choose another --out") from None
        for key, value in settings.items():
            if key in before and before[key] != value:
                raise CmcError(f"{out} holds records made with {flags.get(key, key)} {before[key]!r}; this run asks "
                               f"{value!r}: give the same {flags.get(key, key)} to resume, or choose another --out")
        settings = {**before, **settings}
    atomic_write_json(path, settings)


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
        line = [row_label(r)]
        for k in kinds:
            s = r.sets.get(k)
            line += [_fmt(s.rouge_l), _fmt(s.prob), _fmt(s.truth_ratio)] if s else ["—"] * 3
        if has_fq:
            line.append(_fmt(r.forget_quality))
        line.append(_fmt(r.model_utility))
        cells.append(line)
    return header, cells


def row_label(r) -> str:
    return r.label + (" (read back from --out)" if getattr(r, "stored", False) else "")


def _paired_metrics(rows, kinds: list[str], key_kinds: list[str]) -> list[tuple[str, str, str]]:
    """The paired columns of the behaviour table: (set, per-item metric, title): forget refusals, and the key
    accuracy of the held-out set (else the retain set) — what a delta changes beside what it was trained to."""
    from cmc_cli.data.tofu import SET_TITLES

    out = [("forget", "refusal", "Δ forget refusal vs alone [95% CI]")] if "forget" in kinds else []
    side = next((k for k in ("heldout", "retain") if k in key_kinds), None)
    if side:
        out.append((side, "key_hit", f"Δ {SET_TITLES[side].lower()} key acc. vs alone [95% CI]"))
    return out


def behaviour_columns(rows) -> tuple[list[str], list[list[str]]]:
    """Behaviour first: refusal rate and key accuracy of the greedy answers per set, and each delta row's
    paired change against the same user alone (forget refusals; held-out, else retain, key accuracy; mean over
    items, 95% bootstrap CI). The user alone may be read back from an earlier run (--no-alone)."""
    from cmc_cli.eval.metrics import paired_bootstrap
    from cmc_cli.data.tofu import SET_TITLES

    kinds = [k for k in SET_TITLES if any(k in r.sets and r.sets[k].refusal is not None for r in rows)]
    key_kinds = [k for k in kinds if any(k in r.sets and r.sets[k].key_accuracy is not None for r in rows)]
    header = (["model"] + [f"{SET_TITLES[k]} refusal" for k in kinds] + [f"{SET_TITLES[k]} key acc." for k in key_kinds])
    alone = {r.user: r for r in rows if not r.deltas}
    paired = _paired_metrics(rows, kinds, key_kinds) if any(r.deltas and r.user in alone for r in rows) else []
    header += [title for _, _, title in paired]
    cells = []
    for r in rows:
        line = [row_label(r)] + [_fmt(r.sets[k].refusal) if k in r.sets else "—" for k in kinds]
        line += [_fmt(r.sets[k].key_accuracy) if k in r.sets else "—" for k in key_kinds]
        a = alone.get(r.user)
        for kind, metric, _ in paired:
            mine, theirs = (x.sets.get(kind) if x else None for x in (r, a))
            ok = r.deltas and mine and theirs and mine.n == theirs.n and metric in mine.per_item and metric in theirs.per_item
            if ok:
                m, lo, hi = paired_bootstrap(mine.per_item[metric], theirs.per_item[metric])
            line.append(f"{m:+.2f} [{lo:+.2f}, {hi:+.2f}]" if ok else "")
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
    stop = f", stop at {', '.join(repr(x) for x in cfg.stop)}" if cfg.stop else ""
    lines += ["", f"Settings: user format `{cfg.user_format}`, greedy, {cfg.max_new_tokens} new tokens{stop}, "
              f"alpha {_alpha_text(cfg.alpha)} unless given per delta; cmc {__version__}.", ""]
    return "\n".join(lines)


def write_tofu_report(out: Path, rows, data: dict, cfg) -> None:
    settings = {"user_format": cfg.user_format, "max_new_tokens": cfg.max_new_tokens, "stop": cfg.stop,
                "combine": cfg.combine, "alpha": cfg.alpha}
    atomic_write_json(out / "results.json", {"format": "cmc-eval-tofu/1", "cmc_version": __version__, "data": data,
                                             "settings": settings, "rows": [r.as_dict() for r in rows]})
    atomic_write_text(out / "report.md", tofu_markdown(rows, data, cfg))


def instruct_columns(rows) -> tuple[list[str], list[list[str]]]:
    """Means per row, then each delta row's paired change against the same user alone [95% bootstrap CI]."""
    header = ["model", "n (with ref)", "ref log-lik", "ROUGE-L F", "ROUGE-L R"]
    judged = any(r.win_rate is not None for r in rows)
    if judged:
        header.append("win rate")
    paired = [k for k in ("ref_loglik", "rouge_l_f", "win_rate") if any(k in r.paired for r in rows)]
    titles = {"ref_loglik": "Δ ref log-lik", "rouge_l_f": "Δ ROUGE-L F", "win_rate": "Δ win rate"}
    header += [f"{titles[k]} vs alone [95% CI]" for k in paired]
    cells = []
    for r in rows:
        line = [row_label(r), f"{r.n} ({r.n_ref})", _fmt(r.ref_loglik), _fmt(r.rouge_l_f), _fmt(r.rouge_l_recall)]
        if judged:
            line.append(_fmt(r.win_rate))
        line += [f"{r.paired[k][0]:+.2f} [{r.paired[k][1]:+.2f}, {r.paired[k][2]:+.2f}]" if k in r.paired else ""
                 for k in paired]
        cells.append(line)
    return header, cells


def _alpha_text(alpha) -> str:
    """--alpha as a report says it: one strength or several (one row each), each a number, auto or not given."""
    if isinstance(alpha, list):
        return ", ".join(_alpha_text(a) for a in alpha)
    if alpha is None:
        return "calibrated (`cmc calibrate`; 1 where none is recorded)"
    return f"{alpha:g}" if isinstance(alpha, (int, float)) else f"{alpha} (calibrated)"
