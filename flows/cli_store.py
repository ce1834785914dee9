"""`grokloop ingest | sql | export | export-runs | import-runs | mark-stopped | status`: the store from the
command line."""

from __future__ import annotations

import re
import sys
from datetime import timedelta
from enum import StrEnum
from importlib import resources
from pathlib import Path

import orjson
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, TextColumn
from rich.table import Column, Table
from rich.text import Text

from agents.progress import LOG_WIDTH, progress_bar
from flows.cli_common import HOME, OneLineErrors, console, err_console
from flows.cli_output import fits, markdown_table, print_table
from storage.atif import export_atif
from storage.export import export_jsonl
from storage.home import spool_dir, store_location
from storage.ingest import ingest_paths, ingest_spool
from storage.query import run_sql
from storage.runs import (
    export_runs,
    flush_pending,
    import_runs,
    mark_stopped,
    match_runs,
    pending_records,
    quiet_runs,
)
from storage.spool import TMP_SUFFIX, published_segments, remove_stale_tmp
from storage.store import StoreLocked, open_store, schema_version, time_limit

QUIET_RUN = timedelta(hours=1)  # `status` names runs `running` with no record for this long
SHOWN_ROWS = 1000  # --format table shows at most this many rows; csv, json and parquet write them all

app = typer.Typer(cls=OneLineErrors, no_args_is_help=True)


class OutputFormat(StrEnum):
    table = "table"
    csv = "csv"
    json = "json"
    markdown = "markdown"  # for a results page: values as the query wrote them
    parquet = "parquet"


class ExportFormat(StrEnum):
    atif = "atif"
    jsonl = "jsonl"


@app.command()
def ingest(
    paths: list[Path] = typer.Argument(None, help="files or folders (grokloop Arrow or JSONL segments, or ATIF); none = the spool"),
    format: str = typer.Option("auto", "--format", help="auto | grokloop | atif"),
    max_record_bytes: int = typer.Option(1 << 20, help="a larger record is quarantined as oversized"),
    timeout: float = typer.Option(600.0, help="seconds to wait for the store when another process holds it"),
    home: str = HOME,
) -> None:
    """Ingest the spool (or the given files) into the store, exactly once. The store is opened
    once per batch; a batch that meets another process's lock waits up to --timeout and retries."""
    def writer():
        return open_store(store_location(home), timeout=timeout)

    spool = spool_dir(home)
    total = len(paths) if paths else len(published_segments(spool))
    try:
        with progress_bar(TextColumn("ingest"), BarColumn(), MofNCompleteColumn(),
                          console=console, transient=True) as bar:
            task = bar.add_task("ingest", total=total or None)

            def advance(segments, _report) -> None:
                bar.advance(task, len(segments) if not paths else 0)

            if paths:
                report = ingest_paths(writer, paths, format, max_record_bytes=max_record_bytes, on_batch=advance)
            else:
                report = ingest_spool(writer, spool, max_record_bytes=max_record_bytes, on_batch=advance)
        with writer() as con:  # training records that waited for a busy store (storage/runs.py)
            flush_pending(con, home)
    except StoreLocked as err:
        raise StoreLocked(f"{err} (what was not ingested stays in the spool for the next ingest)") from err
    style = "yellow" if report.quarantined else "green"
    console.print(f"[{style}]ingested[/{style}] {report.segments} segment(s), skipped {report.skipped} "
                  f"already ingested: {report.trajectories} trajectories, {report.steps} steps, "
                  f"{report.quarantined} quarantined ({report.seconds:.2f} s)"
                  + (f"; {report.held} left to another ingest worker" if report.held else ""))
    if report.quarantined:
        console.print("see why: grokloop sql \"SELECT * FROM quarantine_summary\"")


def view_names() -> list[str]:
    """The views `storage/sql/views.sql` creates, in its order (the help text lists them from there)."""
    text = resources.files("storage.sql").joinpath("views.sql").read_text()
    return re.findall(r"CREATE\s+(?:OR\s+REPLACE\s+)?VIEW\s+(?:IF\s+NOT\s+EXISTS\s+)?(\w+)", text, re.I)


@app.command(help="Run a read-only SQL query on the store. Views: " + ", ".join(view_names()) + ".")
def sql(
    query: str = typer.Argument(None, help="a read-only SQL query, e.g. \"SELECT * FROM success_rate\""),
    file: Path = typer.Option(None, "--file", help="read the query from this .sql file instead"),
    format: OutputFormat = typer.Option(OutputFormat.table, "--format", "-f"),
    output: Path = typer.Option(None, "--output", "-o", help="write here instead of the terminal"),
    timeout: float = typer.Option(30.0, help="seconds to wait for a writer's lock"),
    max_seconds: float = typer.Option(300.0, help="stop the query after this many seconds"),
    memory_limit: str = typer.Option("2GB", help="the query's memory limit (DuckDB syntax: 500MB, 4GB)"),
    table: list[str] = typer.Option(None, "--table", help="NAME=FILE.parquet: a Parquet file the query can "
                                    "name as NAME, beside the store (repeatable)"),
    home: str = HOME,
) -> None:
    if format is OutputFormat.parquet and output is None:
        raise ValueError("--format parquet needs --output FILE")
    if (query is None) == (file is None):
        raise ValueError("give a query or --file FILE.sql (one of them)")
    if file is not None:
        if not file.is_file():
            raise ValueError(f"--file {file}: no such file")
        query = file.read_text()
    result = run_sql(query, path=store_location(home), timeout=timeout, max_seconds=max_seconds,
                     memory_limit=memory_limit, tables=dict(_parquet_table(spec) for spec in table or ()))
    _write_table(result, format, output)


def _parquet_table(spec: str):
    """"NAME=FILE" -> (NAME, the file as an Arrow table); a clear error for anything else."""
    name, _, path = spec.partition("=")
    if not name.isidentifier() or not path:
        raise ValueError(f"--table takes NAME=FILE.parquet (NAME a SQL identifier), got {spec!r}")
    try:
        return name, pq.read_table(path)
    except (OSError, ValueError) as err:  # missing, unreadable or not Parquet
        raise ValueError(f"--table {name}: cannot read {path!r} as Parquet ({err})") from err


def _write_table(table, format: OutputFormat, output: Path | None) -> None:
    if format is OutputFormat.table:
        shown = min(table.num_rows, SHOWN_ROWS)
        caption = f"{table.num_rows} row(s)" + (f", the first {shown} shown" if shown < table.num_rows else "")
        # Text, not markup: a value like "[x]" is data. Headers never wrap or shrink.
        view = Table(*(Column(Text(n), min_width=len(n)) for n in table.column_names))
        for row in table.slice(0, shown).to_pylist():
            view.add_row(*(Text("" if v is None else str(v)) for v in row.values()))
        if output:  # a file: as wide as the table
            with output.open("w") as fh:
                Console(file=fh, width=LOG_WIDTH).print(view, caption)
            console.print(f"wrote {table.num_rows} row(s) to {output}")
            return
        if fits(view, console):
            console.print(view, caption)  # the count on its own line: a caption wraps to the table's width
            return
        # Wider than the terminal: a table would cut headers and values, so the rows go out whole as CSV.
        err_console.print(f"{table.num_columns} columns do not fit in {console.width} characters: CSV follows "
                          "(--format json|csv to choose)", markup=False)
        format = OutputFormat.csv
    if format is OutputFormat.csv:
        # JSON, UUID and list columns are written as their text.
        table = pa.table({n: c if _plain(c.type) else c.cast(pa.string()) if pa.types.is_binary(c.type)
                          else pa.array([None if v is None else str(v) for v in c.to_pylist()], pa.string())
                          for n, c in zip(table.column_names, table.columns, strict=True)})
        pacsv.write_csv(table, str(output) if output else sys.stdout.buffer)
    elif format is OutputFormat.json:
        text = b"".join(orjson.dumps(row, default=str) + b"\n" for row in table.to_pylist())
        (output.write_bytes(text) if output else sys.stdout.buffer.write(text))
    elif format is OutputFormat.markdown:
        text = "\n".join(markdown_table(table.to_pylist(), table.column_names, round_floats=False)) + "\n"
        (output.write_text(text) if output else sys.stdout.write(text))
    else:
        pq.write_table(table, output)
    if output:
        console.print(f"wrote {table.num_rows} row(s) to {output}")


def _plain(type_) -> bool:
    return pa.types.is_integer(type_) or pa.types.is_floating(type_) or pa.types.is_string(type_) \
        or pa.types.is_boolean(type_) or pa.types.is_timestamp(type_) or pa.types.is_large_string(type_)


@app.command()
def export(
    format: ExportFormat = typer.Option(..., "--format", "-f", help="atif | jsonl"),
    output: Path = typer.Option(..., "--output", "-o"),
    where: str = typer.Option(None, help="SQL condition on the trajectories table, e.g. \"family = 'modular'\""),
    max_seconds: float = typer.Option(300.0, help="stop the export's query after this many seconds"),
    memory_limit: str = typer.Option("2GB", help="the export query's memory limit (DuckDB syntax)"),
    home: str = HOME,
) -> None:
    """Write trajectories out as ATIF (for other frameworks) or grokloop JSONL."""
    with open_store(store_location(home), read_only=True, memory_limit=memory_limit) as con, time_limit(con, max_seconds):
        n = (export_atif if format is ExportFormat.atif else export_jsonl)(con, output, where)
    console.print(f"wrote {n} trajectories to {output} ({format.value})")


@app.command("export-runs")
def export_runs_command(
    runs: list[str] = typer.Argument(..., help="run ids, or glob patterns of them ('clusters-15pct*')"),
    output: Path = typer.Option(..., "--output", "-o", help="the Parquet file to write"),
    home: str = HOME,
) -> None:
    """Write runs and every metric they recorded to one Parquet file, which `grokloop import-runs`
    puts in another store (a results page's runs, a colleague's machine)."""
    try:
        n = export_runs(home, list(dict.fromkeys(r for pattern in runs for r in match_runs(home, pattern))), output)
    except ValueError as e:
        raise typer.BadParameter(str(e), param_hint="RUNS") from e
    console.print(f"wrote {n} run(s) to {output} (their metrics; `grokloop import-runs {output}` reads it)")


@app.command("import-runs")
def import_runs_command(
    path: Path = typer.Argument(..., help="a runs export: docs/results/<experiment>_runs.parquet"),
    home: str = HOME,
) -> None:
    """Put the runs of a results page's Parquet file (and every metric they recorded) in the store,
    so that `grokloop experiment NAME --report-only` and `grokloop plot` read them again. Their
    weights are not in the file: an experiment run here reports them and does not train them on. A
    run the store already holds takes the file's later records; another training under its run id
    (a rerun from scratch: other values at the same steps) is refused, and nothing is imported."""
    if not path.is_file():
        raise typer.BadParameter(f"{path}: no such file", param_hint="PATH")
    try:
        n = import_runs(home, path)
    except ValueError as e:
        raise typer.BadParameter(str(e), param_hint="PATH") from e
    console.print(f"imported {n} run(s) from {path} into {store_location(home)} (numbers only: their checkpoints "
                  "stay where they were trained, so they are reported here, not trained on)")


@app.command("mark-stopped")
def mark_stopped_command(
    runs: list[str] = typer.Argument(..., help="run ids, or glob patterns of them ('composition-programs-*')"),
    home: str = HOME,
) -> None:
    """Record as `stopped` those of these runs the store still has as `running` because their process
    died without saying so (SIGKILL, a lost machine; `grokloop status` names the likely ones). The
    command that started them continues them from their checkpoints. It stops no process: a run
    still training records itself `running` again at its next evaluation."""
    try:
        run_ids = list(dict.fromkeys(r for pattern in runs for r in match_runs(home, pattern, stored=True)))
    except ValueError as e:
        raise typer.BadParameter(str(e), param_hint="RUNS") from e
    marked = mark_stopped(home, run_ids)
    left = [r for r in run_ids if r not in marked]
    console.print(f"recorded {len(marked)} run(s) as stopped" + (f": {', '.join(marked)}" if marked else ""))
    if left:
        console.print(f"{len(left)} not running, left as they were: {', '.join(left)}")


@app.command()
def status(home: str = HOME) -> None:
    """Where the store is, its schema version, rows per table and the spool backlog."""
    path, spool = store_location(home), spool_dir(home)
    shared = isinstance(path, str)  # the DuckLake store (storage/lake.py): no file to look at
    backlog = published_segments(spool)
    stale = remove_stale_tmp(spool)  # left by writers that died mid-write
    writing = [p for p in spool.iterdir() if p.name.endswith(TMP_SUFFIX)] if spool.exists() else []
    console.print(f"store   {path}" + ("" if shared or path.exists() else "  (not created yet)"))
    console.print(f"spool   {spool}: {len(backlog)} segment(s) waiting, "
                  f"{sum(p.stat().st_size for p in backlog) / 1e6:.1f} MB; {len(writing)} being written"
                  + (f"; removed {len(stale)} stale temp file(s) of writers that died" if stale else ""))
    if waiting := pending_records(home):
        console.print(f"runs    {waiting} training record(s) wait in runs/*/pending for a busy store; "
                      f"`grokloop ingest` writes them")
    if not shared and not path.exists():
        return
    with open_store(path, read_only=True) as con:
        console.print(f"schema  version {schema_version(con)}")
        tables = [r[0] for r in con.execute(
            "SELECT table_name FROM information_schema.tables WHERE table_type = 'BASE TABLE' "
            "AND table_catalog = current_database() ORDER BY table_name").fetchall()]
        counts = Table("table", "rows")
        for name in tables:
            counts.add_row(name, f"{con.execute(f'SELECT count(*) FROM {name}').fetchall()[0][0]:,}")
    print_table(counts, console, err_console)
    if quiet := quiet_runs(home, QUIET_RUN):
        hours = QUIET_RUN.total_seconds() / 3600
        console.print(f"runs    {len(quiet)} recorded `running` with no record for over {hours:g} h, their process "
                      f"likely gone (`grokloop mark-stopped RUN...` records them stopped): "
                      + ", ".join(f"{run_id} (last {at:%Y-%m-%d %H:%M} UTC)" for run_id, at in quiet))
