"""Output that reads the same in a terminal and in a log (a pipe, a file, a CI job).

    console = output_console()                      # no wrapping or cutting when stdout is not a TTY
    with progress_bar(TextColumn("train"), BarColumn(), console=console) as bar:
        task = bar.add_task("train", total=600, info="")
        bar.update(task, completed=step, info="test 0.93")

In a terminal, `progress_bar` is rich's live bar. Anywhere else a bar is one line rewritten in
place, which a log keeps as nothing (rich prints it once, at the end), so there it is a plain line
every `every` seconds instead: `train: 300/600 (50%), 12 s, ~12 s left, test 0.93`.
"""

from __future__ import annotations

import time
from typing import Any

from rich.console import Console, ConsoleDimensions
from rich.progress import Progress

LOG_EVERY = 10.0   # seconds between progress lines in a log
LOG_WIDTH = 100_000  # a log line is as long as its content: rich pads nothing it does not have to


class OutputConsole(Console):
    """A rich Console that, whenever its stream is not a terminal, never wraps a line or cuts a cell.

    rich otherwise takes the width of whatever terminal stdin or stderr is attached to (or 80), so
    output piped to a file was wrapped mid-field and tables cut run ids and paths to "…"."""

    @property
    def size(self) -> ConsoleDimensions:
        size = super().size
        return size if self.is_terminal else ConsoleDimensions(LOG_WIDTH, size.height)


def output_console(*, stderr: bool = False, quiet: bool = False) -> Console:
    return OutputConsole(stderr=stderr, quiet=quiet)


class LogProgress:
    """The part of rich's Progress the loops use, printing a line per task every `every` seconds."""

    def __init__(self, console: Console, every: float = LOG_EVERY, disable: bool = False,
                 final: bool = True):
        self.console, self.every, self.disable, self.final = console, every, disable, final
        self.tasks: dict[int, dict[str, Any]] = {}

    def __enter__(self) -> LogProgress:
        return self

    def __exit__(self, *exc) -> None:
        for task_id in self.tasks if self.final else ():
            self._line(task_id)

    def add_task(self, description: str, total: float | None = None, completed: float = 0,
                 **fields: Any) -> int:
        now = time.monotonic()
        task_id = len(self.tasks)
        self.tasks[task_id] = {"description": description, "total": total, "completed": completed,
                               "start": now, "printed": now, "at_start": completed, "fields": fields}
        return task_id

    def update(self, task_id: int, *, completed: float | None = None, advance: float | None = None,
               total: float | None = None, description: str | None = None, **fields: Any) -> None:
        task = self.tasks[task_id]
        if completed is not None:
            task["completed"] = completed
        if advance is not None:
            task["completed"] += advance
        if total is not None:
            task["total"] = total
        if description is not None:
            task["description"] = description
        task["fields"].update(fields)
        if time.monotonic() - task["printed"] >= self.every:
            self._line(task_id)

    def advance(self, task_id: int, advance: float = 1) -> None:
        self.update(task_id, advance=advance)

    def _line(self, task_id: int) -> None:
        task = self.tasks[task_id]
        now = time.monotonic()
        task["printed"] = now
        if self.disable:
            return
        done, total, elapsed = task["completed"], task["total"], now - task["start"]
        parts = [f"{task['description']}: {done:g}" + (f"/{total:g} ({100 * done / total:.0f}%)" if total else "")]
        parts.append(f"{elapsed:.0f} s")
        rate = (done - task["at_start"]) / elapsed if elapsed > 0 else 0.0
        if total and rate > 0 and done < total:
            parts.append(f"~{(total - done) / rate:.0f} s left")
        parts += [str(v) for v in task["fields"].values() if v not in ("", None)]
        self.console.print(", ".join(parts), markup=False, highlight=False, soft_wrap=True)


def progress_bar(*columns: Any, console: Console | None = None, disable: bool = False,
                 transient: bool = False, every: float = LOG_EVERY) -> Progress | LogProgress:
    """rich's Progress in a terminal; `LogProgress` (a line every `every` seconds) anywhere else."""
    console = console or output_console()
    if console.is_terminal:
        return Progress(*columns, console=console, disable=disable, transient=transient)
    return LogProgress(console, every=every, disable=disable or console.quiet, final=not transient)
