"""`cmc zoo build | info`: the built-in model world (cached outside the repository)."""

from __future__ import annotations

from typing import Annotated

import typer
from rich.table import Table

from cmc_cli.commands._common import UI, console, err_console, handle_errors, info

Opt = typer.Option
zoo_app = typer.Typer(help="The built-in tiny model world used by `cmc demo` and the tests.", no_args_is_help=True)


@zoo_app.command("build")
@handle_errors
def build(
    size: Annotated[str, Opt(help="full (100 authors, ~1-2.5M-parameter models) or reduced (20 authors, for CI).")] = "full",
    root: Annotated[str, Opt(help="Where to build (default: $CMC_CACHE/zoo/<spec hash>).")] = None,
    jobs: Annotated[int, Opt(help="Models trained in parallel (default: one per CPU core, at most 3).")] = None,
) -> None:
    """Build what is missing of the model world: data, tokenizers, base and TOFU models."""
    from cmc_cli.zoo.build import build_zoo, zoo_from_size

    spec = zoo_from_size(size)
    running = {}

    def on_event(kind, name, detail=None):
        if UI.quiet:
            return
        if kind == "start":
            running[name] = True
            err_console.print(f"building {name} …", highlight=False)
        elif kind == "done":
            err_console.print(f"[green]built[/green] {name}" + (f" ({detail})" if detail else ""), highlight=False)

    zoo = build_zoo(spec, root, jobs, on_event=on_event)
    info(f"[green]world ready[/green] in {zoo.root}")
    if UI.quiet:
        print(zoo.root)


@zoo_app.command("info")
@handle_errors
def show(
    size: Annotated[str, Opt(help="full or reduced.")] = "full",
    root: Annotated[str, Opt(help="A world directory (default: $CMC_CACHE/zoo/<spec hash>).")] = None,
) -> None:
    """What the model world holds and which parts are built."""
    from pathlib import Path

    from cmc_cli.zoo.build import Zoo, artifact_names, zoo_from_size, zoo_root

    spec = zoo_from_size(size)
    zoo = Zoo(Path(root) if root else zoo_root(spec), spec)
    built = zoo.manifest()["artifacts"]
    t = Table(title=f"model world ({size}) in {zoo.root}")
    for h in ("artifact", "built", "sha256"):
        t.add_column(h)
    for n in artifact_names(zoo):
        e = built.get(n)
        t.add_row(n, "yes" if e else "no", e["sha256"][:12] if e else "")
    console.print(t)
