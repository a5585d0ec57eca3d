"""`cmc demo`: train one delta once and watch it change three different LLMs, on the built-in world."""

from __future__ import annotations

from typing import Annotated

import typer
from rich.table import Table

from cmc_cli.commands._common import UI, console, err_console, handle_errors, info

Opt = typer.Option


@handle_errors
def demo(
    size: Annotated[str, Opt(help="full (100 authors; ~7.5 min to build once on 2 cores) or reduced (20 authors).")] = "full",
    root: Annotated[str, Opt(help="The world's directory (default: $CMC_CACHE/zoo/<spec hash>).")] = None,
    out: Annotated[str, Opt("-o", "--out", help="Deltas, token maps, report.md, results.json (default: <world>/demo).")] = None,
    alpha: Annotated[float, Opt(help="Strength of the unlearning delta.")] = 1.0,
    instruct_alpha: Annotated[float, Opt(help="Strength of the instruction delta (and of its proxy-tuning row).")] = 1.0,
    eval_limit: Annotated[int, Opt(help="Items per evaluation set.")] = 60,
    jobs: Annotated[int, Opt(help="Models trained in parallel while building the world.")] = None,
    seed: Annotated[int, Opt(help="Seed of the deltas and of the shuffled-map control.")] = 0,
) -> None:
    """The whole pipeline on the built-in model world: map-vocab, train, apply to 3 models, eval."""
    import math

    from cmc_cli.errors import ConfigError
    from cmc_cli.zoo.demo import TABLE1_HEADER, TABLE2_HEADER, DemoConfig, run_demo, table1_rows, table2_rows

    for name, a in (("--alpha", alpha), ("--instruct-alpha", instruct_alpha)):
        if not math.isfinite(a):
            raise ConfigError(f"{name} must be a finite number, got {a}")
    if eval_limit <= 0:
        raise ConfigError(f"--eval-limit must be positive, got {eval_limit}")
    cfg = DemoConfig(size=size, root=root, out=out, alpha=alpha, instruct_alpha=instruct_alpha, eval_limit=eval_limit,
                     jobs=jobs, seed=seed)

    def on_event(kind, name, detail=None):
        if not UI.quiet and kind in ("start", "done"):
            err_console.print(("building " if kind == "start" else "[green]built[/green] ") + name
                              + (f" ({detail})" if detail else ""), highlight=False)

    phase = (lambda msg: None) if UI.quiet else (lambda msg: err_console.print(f"[dim]{msg}[/dim]", highlight=False))
    res = run_demo(cfg, on_phase=phase, on_event=on_event)
    for title, header, rows in (
            ("Table 1 — instruction tuning: questions about authors the delta never saw in QA form", TABLE1_HEADER,
             table1_rows(res.instruct_rows)),
            (f"Table 2 — unlearning forget{cfg.forget_split:02d} (RL: ROUGE-L recall, TR: truth ratio)", TABLE2_HEADER,
             table2_rows(res.tofu_rows))):
        t = Table(title=title)
        for i, h in enumerate(header):
            t.add_column(h, justify="left" if i == 0 else "right")
        for row in rows:
            t.add_row(*row)
        console.print(t)
    info("One delta per task, trained once beside the template; 'other' has another architecture and vocabulary. "
         "Compare the pm-mined row with the shuffled-map control: the gap is the transfer.")
    info(f"[green]wrote[/green] {res.out}/report.md ({', '.join(f'{k} {v:.0f} s' for k, v in res.seconds.items())})")
