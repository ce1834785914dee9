"""Tables that are never cut: a rich table when it fits the terminal, CSV when it does not; and
Markdown tables for the results pages.

In a log (stdout not a terminal) the console is as wide as the content (agents/progress.py), so
a table always fits there; in a narrow terminal rich would shrink columns and cut run ids, paths
and headers to "…", which a person then copies wrongly.
"""

from __future__ import annotations

import csv
import io
from typing import Any

from rich.console import Console
from rich.measure import Measurement
from rich.table import Table
from rich.text import Text

from agents.progress import LOG_WIDTH


def fits(table: Table, console: Console) -> bool:
    """Whether the table at its natural width fits the console (rich's own measure is capped at it)."""
    return Measurement.get(console, console.options.update_width(LOG_WIDTH), table).maximum <= console.width


def print_table(table: Table, console: Console, err_console: Console | None = None) -> None:
    if fits(table, console):
        console.print(table)
        return
    if err_console is not None:
        err_console.print(f"{len(table.columns)} columns do not fit in {console.width} characters: CSV follows",
                          markup=False)
    if table.title:
        console.print(_plain(table.title), markup=False, highlight=False, soft_wrap=True)
    console.print(as_csv(table), end="", markup=False, highlight=False, soft_wrap=True)


def as_csv(table: Table) -> str:
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow([_plain(c.header) for c in table.columns])
    writer.writerows(zip(*([_plain(cell) for cell in c.cells] for c in table.columns), strict=True))
    return out.getvalue()


def _plain(cell) -> str:
    if isinstance(cell, Text):
        return cell.plain
    return Text.from_markup(cell).plain if isinstance(cell, str) else str(cell)


def markdown_table(rows: list[dict[str, Any]], columns: list[str], round_floats: bool = True) -> list[str]:
    """A Markdown table's lines; missing values as "—". `round_floats`: 3 decimals below 10, none above
    (the pages' metrics and step counts); off, values are written as they are (a query formats its own)."""
    def fmt(v: Any) -> str:
        if v is None:
            return "—"
        if round_floats and isinstance(v, float):
            return f"{v:.3f}" if v < 10 else f"{v:.0f}"
        return str(v).replace("|", "\\|")  # a "|" in a value would split its cell

    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(fmt(r.get(c)) for c in columns) + " |" for r in rows]
    return lines
