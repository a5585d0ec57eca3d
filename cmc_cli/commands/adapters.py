"""`cmc adapters`: list the LLM-family adapters that are loaded, built-in and plugins."""

from __future__ import annotations

from rich.table import Table

from cmc_cli.commands._common import console, handle_errors


@handle_errors
def adapters() -> None:
    """List loaded adapters (built-in and from plugins) in the order they are tried."""
    from cmc_cli.plugins import registered_adapters

    t = Table(title="cmc adapters (tried in this order)")
    for col in ("name", "source", "convention", "description"):
        t.add_column(col)
    for name, reg in registered_adapters().items():
        t.add_row(name, reg.source, reg.adapter.convention or "detect", reg.adapter.description)
    console.print(t)
