"""What the commands share: consoles, the error handler, progress that `--quiet` turns off."""

from __future__ import annotations

import functools
import logging
import os
import sys
from contextlib import contextmanager

import typer
from rich.console import Console
from rich.markup import escape

from cmc_cli.errors import CmcError

console = Console()
err_console = Console(stderr=True)


class UI:
    quiet = False


def setup_logging(verbose: int, quiet: bool) -> None:
    UI.quiet = quiet
    level = logging.WARNING if quiet or verbose == 0 else logging.INFO if verbose == 1 else logging.DEBUG
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s", force=True)
    for noisy in ("transformers", "huggingface_hub", "urllib3", "filelock"):
        logging.getLogger(noisy).setLevel(max(level, logging.WARNING))
    # transformers reads these when it is imported (only by the commands that load models: start-up stays light)
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    os.environ.setdefault("TQDM_DISABLE", "1")  # transformers' GGUF conversion draws a plain tqdm bar
    if "transformers" in sys.modules:
        from transformers.utils import logging as hf_logging

        hf_logging.set_verbosity_error()
        hf_logging.disable_progress_bar()


def handle_errors(fn):
    """Turn a CmcError into one red line on stderr and exit 1 (traceback only with CMC_DEBUG=1)."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except CmcError as e:
            if os.environ.get("CMC_DEBUG"):
                raise
            # the message is text, not markup: "[serve]" or a list in it must print as written
            err_console.print(f"[bold red]error:[/bold red] {escape(str(e))}", highlight=False, soft_wrap=True)
            raise typer.Exit(e.exit_code) from None
        except KeyboardInterrupt:
            err_console.print("[yellow]interrupted[/yellow]")
            raise typer.Exit(130) from None

    return wrapper


def info(msg: str) -> None:
    if not UI.quiet:
        err_console.print(msg, highlight=False)


@contextmanager
def status(initial: str):
    """Yields set_phase(msg) showing a spinner; a no-op under --quiet."""
    if UI.quiet:
        yield lambda msg: None
        return
    with err_console.status(initial) as s:
        yield lambda msg: s.update(msg)
