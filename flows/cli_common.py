"""What every `grokloop` sub-command shares: consoles, the --home option, one way to report errors.

Errors a person can fix (a mistyped option or setting, bad input, a missing file, a locked store,
permissions, a full disk, a home that is not a directory) are one line on stderr naming the
problem and the way out, exit code 2, wherever they are raised: `OneLineErrors`, the app's root
command, catches them and `explain` says them. Commands just raise. Anything else is a bug and
keeps its traceback; `grokloop --debug ...` shows the traceback for every error.
"""

from __future__ import annotations

import contextlib
import errno
import signal
import sys
import threading
from collections.abc import Iterator

import duckdb
import typer
from rich.markup import escape
from typer.core import TyperGroup

from agents.progress import output_console
from agents.tasks import FAMILY_NAMES, family_class
from diffusion.config import parse_settings
from storage.store import StoreError

# Piped to a file or a CI log: no wrapping or cutting (agents/progress.py).
console = output_console()
err_console = output_console(stderr=True)

HOME = typer.Option(None, "--home", help="grokloop home (default $GROKLOOP_HOME or ./.grokloop)")
FAMILY = typer.Option(..., "--family", "-f", help=" | ".join(FAMILY_NAMES))
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


def family_params(family: str, items: list[str] | None) -> dict:
    """`--param key=value` family parameters, typed by the family's constructor (`n_entities=60`,
    `operations='["x+y"]'`)."""
    return parse_settings(family_class(family), items or [], what=f"{family} family")


def explain(err: BaseException) -> str | None:
    """The one line for an error a person can fix, None for anything else (a bug)."""
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
    if isinstance(err, typer.TyperException):  # an unknown option, a missing argument, a bad value
        where = f" (see {err.ctx.command_path} --help)" if getattr(err, "ctx", None) else ""
        return " ".join(err.format_message().split()) + where
    if isinstance(err, (StoreError, ValueError, FileNotFoundError, FileExistsError)):
        return str(err)
    return None


def print_error(message: str) -> None:
    # One line, never wrapped: a message of several lines (DuckDB's, with the query under it) is joined.
    line = " ".join(part.strip() for part in message.splitlines() if part.strip())
    err_console.print(f"[red]error:[/red] {escape(line)}", soft_wrap=True)


@contextlib.contextmanager
def sigterm_exits() -> Iterator[None]:
    """SIGTERM ends a command as Ctrl-C does, by an exception: `finally` blocks and atexit run, so the
    Prefect server a command started stops with it instead of outliving it. A training loop catches
    SIGTERM itself while it runs (diffusion/train.py: checkpoint, then exit 143)."""
    if threading.current_thread() is not threading.main_thread():  # signal.signal's rule
        yield
        return
    previous = signal.signal(signal.SIGTERM, _exit)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _exit(signum: int, frame) -> None:
    raise SystemExit(128 + signum)


class OneLineErrors(TyperGroup):
    """The root `grokloop` command: an error a person can fix, raised anywhere in any command
    (or by click while reading the command line), comes out as one line and exit code 2."""

    def main(self, args=None, prog_name=None, complete_var=None, standalone_mode=True, **extra):
        if not standalone_mode:  # a caller that wants the exceptions
            return super().main(args, prog_name, complete_var, standalone_mode=False, **extra)
        with sigterm_exits():
            code = self._main(args, prog_name, complete_var, **extra)
        sys.exit(code if isinstance(code, int) else 0)  # typer.Exit(n) comes back as n

    def _main(self, args, prog_name, complete_var, **extra):
        try:
            code = super().main(args, prog_name, complete_var, standalone_mode=False, **extra)
        except typer.TyperException as err:
            # `grokloop` alone: typer has printed the help (its class is private; typer checks the name too)
            if type(err).__name__ == "NoArgsIsHelpError":
                sys.exit(err.exit_code)
            print_error(explain(err))
            sys.exit(2)
        except typer.Abort:
            print_error("aborted")
            sys.exit(1)
        except Exception as err:
            message = None if DEBUG else explain(err)
            if message is None:
                raise
            print_error(message)
            sys.exit(2)
        return code
