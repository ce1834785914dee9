"""What every `grokloop` sub-command shares: consoles, the --home option, one way to report bad input."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import typer
from rich.markup import escape

from agents.progress import output_console

# Piped to a file or a CI log: no wrapping or cutting (agents/progress.py).
console = output_console()
err_console = output_console(stderr=True)

HOME = typer.Option(None, "--home", help="grokloop home (default $GROKLOOP_HOME or ./.grokloop)")


def fail(err: Exception) -> None:
    """One line naming the problem, exit code 2; never a traceback for input a person can fix."""
    err_console.print(f"[red]error:[/red] {escape(str(err))}")
    raise typer.Exit(2) from err


@contextmanager
def user_errors() -> Iterator[None]:
    """Bad input (unknown setting, missing run or snapshot, refused SQL, locked store) -> `fail`."""
    from storage.store import StoreError

    try:
        yield
    except (ValueError, FileNotFoundError, FileExistsError, StoreError) as err:
        fail(err)
