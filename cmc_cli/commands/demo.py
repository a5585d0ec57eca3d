"""`cmc demo`: train one delta once and watch it change three different LLMs, on the built-in world."""

from __future__ import annotations

from typing import Annotated

import typer

from cmc_cli.commands._common import UI, console, err_console, handle_errors, info

Opt = typer.Option


@handle_errors
def demo(
    size: Annotated[str, Opt(help="full (100 authors; ~7.5 min to build once on 2 cores) or reduced (20 authors).")] = "full",
    root: Annotated[str, Opt(help="The world's directory (default: $CMC_CACHE/zoo/<spec hash>).")] = None,
    out: Annotated[str, Opt("-o", "--out", help="Deltas, token maps, report.md, results.json (default: <world>/demo).")] = None,
    seeds: Annotated[int, Opt(help="Deltas trained per task (seeds --seed, --seed+1, ...); rows show mean ± 95% CI.")] = 3,
    method: Annotated[str, Opt(help="Unlearning method of the unlearning delta (see `cmc unlearn --help`).")] = "idk",
    alpha: Annotated[float, Opt(help="Strength of the unlearning delta on every model. (default: calibrated per model, `cmc calibrate`)")] = None,
    instruct_alpha: Annotated[float, Opt(help="Strength of the instruction delta on every model. (default: calibrated per model)")] = None,
    silence: Annotated[float, Opt(help="Silence weight of both deltas (see `cmc train --help`). (default: cmc train's)")] = None,
    maps: Annotated[str, Opt(help="Token maps applied to `other`, comma-separated, besides cmc's default (exact-ext), the paper's pm-mined and the shuffled control: exact, pm-suppress, min-ed.")] = "",
    eval_limit: Annotated[int, Opt(help="Items per evaluation set.")] = 40,
    jobs: Annotated[int, Opt(help="Models trained in parallel while building the world.")] = None,
    seed: Annotated[int, Opt(help="First seed of the deltas and of the shuffled-map controls.")] = 0,
) -> None:
    """The whole pipeline on the built-in model world: map-vocab, train, apply to 3 models, eval, over seeds."""
    from cmc_cli.commands.tables import rich_table
    from cmc_cli.zoo.demo import INSTRUCT_HEADER, UNLEARN_HEADER, DemoConfig, headline, instruct_rows, run_demo, unlearn_rows

    cfg = DemoConfig(size=size, root=root, out=out, seeds=seeds, method=method, alpha=alpha, instruct_alpha=instruct_alpha,
                     silence=silence, eval_limit=eval_limit, jobs=jobs, seed=seed, maps=tuple(m.strip() for m in maps.split(",") if m.strip()))

    def on_event(kind, name, detail=None):
        if not UI.quiet and kind in ("start", "done"):
            err_console.print(("building " if kind == "start" else "[green]built[/green] ") + name
                              + (f" ({detail})" if detail else ""), highlight=False)

    phase = (lambda msg: None) if UI.quiet else (lambda msg: err_console.print(f"[dim]{msg}[/dim]", highlight=False))
    res = run_demo(cfg, on_phase=phase, on_event=on_event)
    for title, header, rows in (
            (f"Unlearning ({cfg.method}, forget{cfg.forget_split:02d}): behaviour first, likelihood beside it "
             f"(mean ± 95% CI over {cfg.seeds} seeds)", UNLEARN_HEADER, unlearn_rows(res)),
            ("Instruction tuning: questions about authors the delta never saw in QA form", INSTRUCT_HEADER,
             instruct_rows(res))):
        console.print(rich_table(title, header, rows))
    info(headline(res))
    info(f"[green]wrote[/green] {res.out}/report.md ({', '.join(f'{k} {v:.0f} s' for k, v in res.seconds.items())})")
