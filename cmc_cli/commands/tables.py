"""Terminal tables that fit the terminal: the columns that do not fit beside the first one go into a
continuation table that repeats it, so no cell is cut ("templ…") or wrapped over several lines."""

from __future__ import annotations

from rich.console import Console, ConsoleOptions, RenderResult
from rich.table import Table

_EDGE = 1  # each column costs 2 cells of padding and 1 of border; the table 1 border more


def _col_width(header: str, cells: list[str]) -> int:
    word = max((len(w) for w in header.split()), default=0)  # a header may wrap at its spaces
    return max([word] + [len(c) for c in cells])


class FitTable:
    """A table of a first (label) column and figures, rendered in as many side-by-side chunks of
    columns as the console's width needs. The first column is repeated in each chunk."""

    def __init__(self, title: str, header: list[str], cells: list[list[str]], lead: int = 1):
        self.title, self.header, self.cells, self.lead = title, header, cells, lead

    def widths(self) -> list[int]:
        return [_col_width(h, [c[i] for c in self.cells]) for i, h in enumerate(self.header)]

    def chunks(self, width: int, widths: list[int] | None = None) -> list[list[int]]:
        """Column indices of each chunk (the lead columns first in every one); `widths`: self.widths()."""
        widths = [w + 3 for w in (widths or self.widths())]
        lead = list(range(self.lead))
        base = sum(widths[i] for i in lead) + _EDGE
        out, cur, used = [], [], base
        for i in range(self.lead, len(self.header)):
            if cur and used + widths[i] > width:
                out.append(lead + cur)
                cur, used = [], base
            cur.append(i)
            used += widths[i]
        if cur or not out:
            out.append(lead + cur)
        return out

    def tables(self, width: int) -> list[Table]:
        widths = self.widths()
        parts = self.chunks(width, widths)
        out = []
        for n, cols in enumerate(parts):
            title = self.title if n == 0 else f"{self.title} (continued)"
            t = Table(title=title)
            for i in cols:
                # a fixed width: the header wraps at its spaces, a cell never does
                t.add_column(self.header[i], justify="left" if i < self.lead else "right", width=widths[i],
                             overflow="fold")
            for c in self.cells:
                t.add_row(*(c[i] for i in cols))
            out.append(t)
        return out

    def __rich_console__(self, console: Console, options: ConsoleOptions) -> RenderResult:
        yield from self.tables(options.max_width)


def rich_table(title: str, header: list[str], cells: list[list[str]]) -> FitTable:
    """A terminal table: the first column left-aligned, the figures right-aligned, fitted to the width."""
    return FitTable(title, header, cells)


def behaviour_table(rows) -> FitTable | None:
    from cmc_cli.eval.report import behaviour_columns

    header, cells = behaviour_columns(rows)
    if len(header) == 1:
        return None
    return rich_table("Behaviour: greedy answers (refusal rate, key accuracy)", header, cells)


def tofu_table(rows) -> FitTable:
    """Compact for a terminal: one column per set holding "RL P TR"."""
    from cmc_cli.eval.report import tofu_columns

    header, cells = tofu_columns(rows)
    sets = [h[:-3] for h in header[1::3] if h.endswith(" RL")]
    grouped_header = ["model"] + sets + header[1 + 3 * len(sets):]
    grouped = [[c[0]] + [" ".join(c[1 + 3 * i:4 + 3 * i]) for i in range(len(sets))] + c[1 + 3 * len(sets):]
               for c in cells]
    return rich_table("TOFU: RL P TR per set (ROUGE-L recall, probability, truth ratio)", grouped_header, grouped)


def instruct_table(rows) -> FitTable:
    from cmc_cli.eval.report import instruct_columns

    return rich_table("Instruction following (against the reference responses)", *instruct_columns(rows))
