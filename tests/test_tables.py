"""Terminal tables fit the terminal: columns that do not fit go to a continuation table."""

import io

from rich.console import Console

from cmc_cli.commands.tables import FitTable
from cmc_cli.zoo.demo import UNLEARN_HEADER

ROWS = [["template", "0.00", "1.00", "0.00", "1.00", "1.00", "0.99", "", ""],
        ["other + delta (exact-ext map)", "0.96 ± 0.07", "0.01 ± 0.02", "0.00 ± 0.00", "0.98 ± 0.07", "0.96 ± 0.09",
         "0.04 ± 0.03", "+0.96 [+0.92, +0.99]", "+0.96 [+0.92, +0.99]"]]


def _render(table, width: int) -> str:
    buf = io.StringIO()
    Console(file=buf, width=width, color_system=None).print(table)
    return buf.getvalue()


def test_an_80_column_terminal_gets_whole_cells_in_parts():
    out = _render(FitTable("Unlearning", UNLEARN_HEADER, ROWS), 80)
    lines = out.splitlines()
    assert max(map(len, lines)) <= 80 and "…" not in out
    parts = FitTable("Unlearning", UNLEARN_HEADER, ROWS).chunks(80)
    assert len(parts) >= 3 and all(p[0] == 0 for p in parts)
    assert sorted({i for p in parts for i in p}) == list(range(len(UNLEARN_HEADER)))  # every column, once
    assert out.count("(continued)") == len(parts) - 1
    for label in ("template", "other + delta (exact-ext map)"):
        assert sum(1 for x in lines if x.startswith("│ " + label + " ")) == len(parts)  # one line per part
    for cell in ROWS[1][1:]:
        assert any(cell in x for x in lines), cell  # never wrapped or cut


def test_a_wide_terminal_gets_one_table():
    t = FitTable("Unlearning", UNLEARN_HEADER, ROWS)
    assert t.chunks(250) == [list(range(len(UNLEARN_HEADER)))]
    out = _render(t, 250)
    assert "(continued)" not in out and sum(1 for x in out.splitlines() if x.startswith("│ other")) == 1


def test_a_narrow_terminal_still_shows_one_figure_per_part():
    parts = FitTable("Unlearning", UNLEARN_HEADER, ROWS).chunks(40)
    assert all(len(p) == 2 for p in parts) and len(parts) == len(UNLEARN_HEADER) - 1
