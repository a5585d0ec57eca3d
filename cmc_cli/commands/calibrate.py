"""`cmc calibrate DELTA USER`: choose and record the strength of a delta on a user model."""

from __future__ import annotations

from typing import Annotated

import typer

from cmc_cli.commands import options as O
from cmc_cli.commands._common import UI, console, handle_errors, info, status

Opt = typer.Option
Arg = typer.Argument


@handle_errors
def calibrate(
    delta: Annotated[str, Arg(help="Delta directory (`cmc train` / `cmc unlearn` output).")] = "",
    user: Annotated[str, Arg(help="User LLM: path, cmc.yaml name or hub id in the local cache.")] = "",
    template: Annotated[str, Opt(help="The template the delta was trained beside. (default: the one its cmc.json names)")] = None,
    token_map: O.TOKEN_MAPS = None,
    items: Annotated[int, Opt(help="Items of each set scored (objective, retain, general text). (default: 32)")] = 32,
    general: Annotated[str, Opt(help="Plain UTF-8 text for the off-target budget. (default: texts the template samples)")] = None,
    data: Annotated[str, Opt(help="instruct deltas: their --data, if not where DELTA/config.yaml says.")] = None,
    forget: Annotated[str, Opt(help="unlearning deltas: their --forget, if not where DELTA/config.yaml says.")] = None,
    retain: Annotated[str, Opt(help="unlearning deltas: their --retain, if not where DELTA/config.yaml says.")] = None,
    user_format: O.USER_FORMAT = "auto",
    device: O.DEVICE = "auto",
    dtype: O.DTYPE = "auto",
) -> None:
    """Choose DELTA's strength on USER from forward passes only, record it in DELTA/calibration.json; a delta
    given without a strength (or as PATH:auto / NAME:auto) then uses it in generate, eval and serve."""
    from cmc_cli.commands.tables import rich_table
    from cmc_cli.config.calibrate import CalibrateConfig
    from cmc_cli.engine.calibrate import run_calibrate

    cfg = CalibrateConfig(delta=delta, user=user, template=template, token_maps=token_map or [], items=items,
                          general=general, data=data, forget=forget, retain=retain, user_format=user_format,
                          device=device, dtype=dtype)
    with status("calibrating") as phase:
        cal, ent, path = run_calibrate(cfg, on_phase=phase)
    if UI.quiet:
        print(f"{cal.alpha:g}")
        return
    kinds = list(cal.cost)
    header = (["alpha", "greedy hits", "objective NLL"] + [f"hits lost {k}" for k in kinds] + [f"KL {k}" for k in cal.kl]
              + [""])
    rows = [["0 (alone)", f"{cal.user_alone_top1:.3f}", f"{cal.user_alone_fit:.3f}"] + [""] * (len(kinds) + len(cal.kl)) + [""]]
    for i, a in enumerate(cal.grid):
        mark = "<- chosen" if a == cal.alpha else ""
        over = [f"{cal.cost[k][i]:+.3f}" + (" >" if cal.cost[k][i] > cal.budget[k] else "") for k in kinds]
        rows.append([f"{a:g}", f"{cal.top1[i]:.3f}", f"{cal.fit[i]:.3f}"] + over + [f"{cal.kl[k][i]:.4f}" for k in cal.kl] + [mark])
    rows.append(["template + delta", f"{cal.target_top1:.3f} (target)", f"{cal.target:.3f}"]
                + [f"{cal.budget[k]:.3f} (budget)" for k in kinds] + [""] * len(cal.kl) + [""])
    console.print(rich_table(f"{delta} on {ent['user']['name']}", header, rows))
    for scan, what, target in ((cal.refusal, "greedy refusals", cal.target_refusal),
                               (cal.rouge_l, "ROUGE-L of the greedy answers", cal.target_rouge_l)):
        if scan:
            scanned = ", ".join(f"{a:g}: {r:.2f}" + (" (chosen)" if a == cal.alpha else "") for a, r in scan)
            info(f"{what} on the objective prompts: template + delta {target:.2f}; user + alpha * delta at {scanned}")
    info(f"alpha {cal.alpha:g}: {cal.reason} ({cal.seconds:.1f} s); recorded in {path}")
