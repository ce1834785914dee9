"""What every `grokloop` sub-command shares: consoles, the --home option, one way to report errors.

Errors a person can fix (bad input, a missing file, a locked store, permissions, a full disk, a
home that is not a directory) are one line on stderr naming the problem and the way out, exit
code 2: `explain` turns an exception into that line, `one_line_errors` (around the whole app, in
flows/cli.py) prints it. Anything else is a bug and keeps its traceback; `grokloop --debug ...`
shows the traceback for every error.
"""

from __future__ import annotations

import errno
from collections.abc import Iterator
from contextlib import contextmanager

import duckdb
import typer
from rich.markup import escape

from agents.progress import output_console

# Piped to a file or a CI log: no wrapping or cutting (agents/progress.py).
console = output_console()
err_console = output_console(stderr=True)

HOME = typer.Option(None, "--home", help="grokloop home (default $GROKLOOP_HOME or ./.grokloop)")
DEBUG = False  # set by `grokloop --debug`: tracebacks for every error

_HOME_HINT = "or set GROKLOOP_HOME (--home) to another directory"
_OS_ERRORS = {  # errno -> (what happened, the way out)
    errno.ENOSPC: ("disk full", f"free space on that disk, {_HOME_HINT}"),
    errno.EDQUOT: ("disk quota exceeded", f"free space, {_HOME_HINT}"),
    errno.EACCES: ("permission denied", f"make it writable for this user, {_HOME_HINT}"),
    errno.EPERM: ("operation not permitted", f"check its owner and mode, {_HOME_HINT}"),
    errno.EROFS: ("read-only file system", _HOME_HINT),
    errno.ENOTDIR: ("not a directory (a file is where a folder should be)",
                    f"move the file away, {_HOME_HINT}"),
    errno.ENOENT: ("no such file or directory", "check the path"),
}
_DUCKDB_TEXTS = {  # DuckDB's IO errors carry the OS's words, not an errno
    "No space left on device": errno.ENOSPC, "Permission denied": errno.EACCES,
    "Read-only file system": errno.EROFS, "Not a directory": errno.ENOTDIR,
}


def explain(err: BaseException) -> str | None:
    """The one line for an error a person can fix, None for anything else (a bug)."""
    from storage.store import StoreError

    chain, seen = [], err
    while seen is not None and seen not in chain:
        chain.append(seen)
        seen = seen.__cause__ or seen.__context__
    for e in chain:  # the OS's reason first: it says what to do
        code = e.errno if isinstance(e, OSError) else next(
            (c for text, c in _DUCKDB_TEXTS.items() if text in str(e)), None) if isinstance(e, duckdb.Error) else None
        if code in _OS_ERRORS and not (isinstance(e, FileNotFoundError) and e is err and e.filename is None):
            what, way_out = _OS_ERRORS[code]
            where = getattr(e, "filename", None) or str(e).splitlines()[0]
            return f"{what}: {where}; {way_out}"
    if isinstance(err, (StoreError, ValueError, FileNotFoundError, FileExistsError)):
        return str(err)
    return None


def print_error(message: str) -> None:
    err_console.print(f"[red]error:[/red] {escape(message)}", soft_wrap=True)  # one line, never wrapped


def fail(err: Exception) -> None:
    """One line naming the problem, exit code 2; never a traceback for input a person can fix."""
    if DEBUG:
        raise err
    print_error(explain(err) or str(err))
    raise typer.Exit(2) from err


@contextmanager
def user_errors() -> Iterator[None]:
    """Bad input (unknown setting, missing run or snapshot, refused SQL, locked store) -> `fail`."""
    from storage.store import StoreError

    try:
        yield
    except (ValueError, FileNotFoundError, FileExistsError, StoreError) as err:
        fail(err)


@contextmanager
def one_line_errors() -> Iterator[None]:
    """Around the whole app: an error a person can fix anywhere -> one line, exit 2."""
    try:
        yield
    except Exception as err:
        message = None if DEBUG else explain(err)
        if message is None:
            raise
        print_error(message)
        raise SystemExit(2) from None
