"""`cmc map-vocab DELTA USER`: build a token map from the user vocabulary onto the delta's."""

from __future__ import annotations

from enum import Enum
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from cmc_cli.commands._common import UI, console, handle_errors, info, status
from cmc_cli.config import FALLBACKS, STRATEGIES


Strategy = Enum("Strategy", {s: s for s in STRATEGIES}, type=str)
Fallback = Enum("Fallback", {s: s for s in FALLBACKS}, type=str)


@handle_errors
def map_vocab(
    delta: Annotated[str, typer.Argument(metavar="DELTA", help="Delta/template tokenizer: path, cmc.yaml name or family (llama, ...).")],
    user: Annotated[str, typer.Argument(metavar="USER", help="User LLM tokenizer: path, cmc.yaml name or family (mistral, ...).")],
    output: Annotated[Path | None, typer.Option("-o", "--output", help="Output file (default: tokenmaps/DELTA__USER.safetensors).")] = None,
    strategy: Annotated[Strategy, typer.Option(help="exact-ext (default): exact match, else a delta token that extends the user token, never a shorter prefix of it; pm-mined: prefix match, then min edit distance (the paper's); exact; pm-suppress: pm-mined whose prefix-mapped tokens get only the delta's suppressions; pm-lookahead: pm-mined whose prefix-mapped tokens among the user's top-k are scored by the delta's look-ahead over their whole string (--lookahead-k), the rest as pm-suppress; min-ed; shuffled: exact-ext's targets permuted (the control, --seed).")] = "exact-ext",
    seed: Annotated[int, typer.Option(help="--strategy shuffled: the permutation's seed.")] = 0,
    lookahead_k: Annotated[int | None, typer.Option("--lookahead-k", help="--strategy pm-lookahead: user candidates examined per decode step (default 16).")] = None,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace an existing output file.")] = False,
    fallback: Annotated[Fallback, typer.Option(help="For pm-mined tokens with no candidate: none (unmapped) or min-ed.")] = "none",
    delta_adapter: Annotated[str | None, typer.Option(help="Force the delta's adapter (see `cmc adapters`).")] = None,
    user_adapter: Annotated[str | None, typer.Option(help="Force the user's adapter (see `cmc adapters`).")] = None,
    show: Annotated[bool, typer.Option("--show", help="Print the coverage table and sample mappings.")] = False,
) -> None:
    """Build a token map (user vocabulary -> delta vocabulary), saved as safetensors."""
    from cmc_cli.config import MapVocabConfig
    from cmc_cli.engine.maps import map_vocab_files, sample_mappings  # here: `cmc --help` loads no numpy

    cfg = MapVocabConfig(delta=delta, user=user, output=output, strategy=Strategy(strategy).value,
                         fallback=Fallback(fallback).value, seed=seed, overwrite=overwrite, lookahead_k=lookahead_k,
                         delta_adapter=delta_adapter, user_adapter=user_adapter, show=show)
    with status("resolving tokenizers") as phase:
        res = map_vocab_files(cfg, on_phase=phase)
    tm = res.token_map
    if cfg.show:
        console.print(coverage_table(tm, title=f"{res.user.name} (user) -> {res.delta.name} (delta), {cfg.strategy}"))
        t = Table(title="sample mappings")
        for col in ("kind", "user id", "user token", "delta token"):
            t.add_column(col)
        for kind, i, up, dp in sample_mappings(tm, res.delta, res.user):
            t.add_row(kind, str(i), repr(up), repr(dp))
        console.print(t)
    counts = tm.counts()
    mapped = tm.user_size - counts["unmapped"]
    info(f"[green]wrote[/green] {res.path}  ({mapped:,}/{tm.user_size:,} user tokens mapped, "
         f"{counts['exact']:,} exact, {counts['unmapped']:,} unmapped)")
    if UI.quiet:
        print(res.path)


def coverage_table(tm, title: str) -> Table:
    from cmc_cli.tokenmaps.strategies import KIND_NAMES

    t = Table(title=title)
    t.add_column("kind")
    t.add_column("tokens", justify="right")
    t.add_column("%", justify="right")
    counts = tm.counts()
    for name in KIND_NAMES:
        t.add_row(name, f"{counts[name]:,}", f"{100 * counts[name] / max(1, tm.user_size):.2f}")
    t.add_row("total", f"{tm.user_size:,}", "100.00", style="bold")
    return t
