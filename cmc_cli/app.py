"""The `cmc` command line: wires the subcommands; all logic lives in the library."""

from __future__ import annotations

from typing import Annotated

import typer

from cmc_cli import __version__
from cmc_cli.commands._common import setup_logging
from cmc_cli.commands.adapters import adapters
from cmc_cli.commands.calibrate import calibrate
from cmc_cli.commands.demo import demo
from cmc_cli.commands.eval import eval_app
from cmc_cli.commands.fetch import fetch
from cmc_cli.commands.generate import generate
from cmc_cli.commands.map_vocab import map_vocab
from cmc_cli.commands.serve import serve
from cmc_cli.commands.train import train, unlearn
from cmc_cli.commands.zoo import zoo_app

app = typer.Typer(
    name="cmc",
    help="Cross-model Control: train one tiny delta model once, improve many LLMs with it.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)


def _version(value: bool) -> None:
    if value:
        print(f"cmc {__version__}")
        raise typer.Exit()


@app.callback()
def main_options(
    verbose: Annotated[int, typer.Option("-v", "--verbose", count=True, help="More log output (-vv: debug).")] = 0,
    quiet: Annotated[bool, typer.Option("-q", "--quiet", help="No progress or info output, for scripts.")] = False,
    version: Annotated[bool, typer.Option("--version", callback=_version, is_eager=True, help="Show the version.")] = False,
) -> None:
    """Cross-model Control: train one tiny delta model once, improve many LLMs with it."""
    setup_logging(verbose, quiet)


app.command("map-vocab")(map_vocab)
app.command("train")(train)
app.command("unlearn")(unlearn)
app.command("generate")(generate)
app.command("calibrate")(calibrate)
app.command("serve", context_settings={"allow_extra_args": True, "ignore_unknown_options": True})(serve)
app.add_typer(eval_app, name="eval")
app.add_typer(zoo_app, name="zoo")
app.command("demo")(demo)
app.command("adapters")(adapters)
app.command("fetch")(fetch)


def main() -> None:
    app()
