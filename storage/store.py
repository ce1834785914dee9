"""Opening the DuckDB store: migrations, the one writer, read-only readers that wait.

DuckDB allows one read-write process per file, or any number of read-only ones, never both
(DESIGN decision 1). How readers and writers share it, and why:

- Writers hold the lock briefly: ingest opens the store once per batch (one transaction, then
  closed), so a reader waits at most one batch, not a whole ingest; a training run opens it for
  one short write per evaluation (`storage/runs.py`).
- Nobody loses work to anybody else's lock. Opening waits and retries up to a timeout, then says
  which process holds the file (its PID and command line). A training run never fails because the
  store is busy: what it could not write waits as files in its run directory and reaches the store
  at its next write, at the end of the run (which waits longer), or at the next `grokloop ingest`
  (`storage/runs.py`). Ingest waits up to `--timeout` per batch; a batch not written stays in the
  spool for the next ingest.
- Every read-only connection is a sandbox (`reader_config`): no file access outside the store
  (COPY TO, ATTACH, read_csv, INSTALL/LOAD), no temp directory to spill to (a temp file could be
  written and read back from SQL), a memory limit, and the configuration locked, so no SET,
  PRAGMA, logging, profiling or secrets call can change any of that. A query also runs under a
  time limit (`time_limit`). User-supplied filters are parsed as exactly one expression
  (`one_expression`) and evaluated only on such sandboxes.

Why not readers on a snapshot (a copy of the file per query): copying a large store per query
costs more than the waits it saves, and DuckLake is the way to many writers and readers (DESIGN 10):
`GROKLOOP_STORE=ducklake:postgres://...` opens that instead (`storage/lake.py`), with the same
migrations, views and sandbox; there readers read a snapshot and nobody waits for a lock.
"""

from __future__ import annotations

import contextlib
import re
import threading
import time
from collections.abc import Iterator
from importlib import resources
from pathlib import Path

import duckdb

from storage import lake
from storage.home import grokloop_home, store_location


class StoreError(RuntimeError):
    """Something a person can act on went wrong with the store."""


def migrations() -> list[tuple[int, str, str]]:
    """(version, name, sql) for every numbered file in storage/sql, in order."""
    found = []
    for entry in resources.files("storage.sql").iterdir():
        match = re.fullmatch(r"(\d{4})_(\w+)\.sql", entry.name)
        if match:
            found.append((int(match[1]), match[2], entry.read_text()))
    return sorted(found)


def sql_blocks(filename: str) -> dict[str, str]:
    """The blocks of a .sql file in storage/sql, by the name on each block's `-- name: x` line."""
    text = resources.files("storage.sql").joinpath(filename).read_text()
    parts = re.split(r"^-- name: (\w+)\n", text, flags=re.M)
    return dict(zip(parts[1::2], parts[2::2], strict=True))


def views_sql() -> str:
    return resources.files("storage.sql").joinpath("views.sql").read_text()


def schema_version(con: duckdb.DuckDBPyConnection) -> int:
    exists = con.execute(
        "SELECT count(*) FROM information_schema.tables WHERE table_name = 'schema_version'"
        " AND table_catalog = current_database()"
    ).fetchall()[0][0]
    if not exists:
        return 0
    return con.execute("SELECT coalesce(max(version), 0) FROM schema_version").fetchall()[0][0]


def has_keys(con: duckdb.DuckDBPyConnection) -> bool:
    """Whether the store enforces its primary keys (the embedded file) or not (DuckLake)."""
    return con.execute("SELECT type FROM duckdb_databases() WHERE database_name = current_database()"
                       ).fetchall()[0][0] != "ducklake"


@contextlib.contextmanager
def claimed(con: duckdb.DuckDBPyConnection, segments: list[tuple[str, str]],
            refused: set[str]) -> Iterator[set[str]]:
    """The digests of (digest, source) segments this writer may ingest now: all of them in the
    embedded store (its lock makes this the only writer); on DuckLake the ones it claimed from
    concurrent workers (`lake.claimed`; `refused` carries what others held from batch to batch),
    released on the way out."""
    if has_keys(con):
        yield {digest for digest, _ in segments}
    else:
        with lake.claimed(con, segments, refused) as mine:
            yield mine


def migrate(con: duckdb.DuckDBPyConnection) -> int:
    """Apply every migration newer than the store's version, each in its own transaction. On
    DuckLake the key clauses are left out (`lake.without_keys`) and a migration that meets another
    writer's (the same one, made at the same moment) runs again from the version stored then."""
    keys = has_keys(con)
    ddl = (lambda sql: sql) if keys else lake.without_keys
    if not keys:
        return lake.retry_conflicts(lambda: _migrate(con, ddl, keys), "migrating the store")
    return _migrate(con, ddl, keys)


def _migrate(con: duckdb.DuckDBPyConnection, ddl, keys: bool) -> int:
    con.execute(ddl(
        "CREATE TABLE IF NOT EXISTS schema_version ("
        " version INTEGER PRIMARY KEY, name VARCHAR NOT NULL,"
        " applied_at TIMESTAMP NOT NULL DEFAULT now())"
    ))
    current = schema_version(con)
    for version, name, sql in migrations():
        if version <= current:
            continue
        con.execute("BEGIN")
        try:
            con.execute(ddl(sql))
            con.execute("INSERT INTO schema_version (version, name) VALUES (?, ?)", [version, name])
            con.execute("COMMIT")
        except duckdb.Error as err:
            with contextlib.suppress(duckdb.TransactionException):  # a failed COMMIT ended it already
                con.execute("ROLLBACK")
            if lake.is_conflict(err):
                raise
            raise StoreError(f"migration {version:04d}_{name}.sql failed: {err}") from err
    if keys:
        # Views are recreated every open so a newer grokloop's views replace older ones.
        con.execute(views_sql())
    else:
        lake.ensure_lake_tables(con)
        lake.ensure_views(con, views_sql())
    return schema_version(con)


READ_MEMORY_LIMIT = "2GB"   # a read-only query's memory (DuckDB syntax), `grokloop sql --memory-limit`
READ_SECONDS = 300.0        # a read-only query's time limit, `grokloop sql --max-seconds`


def reader_config(memory_limit: str = READ_MEMORY_LIMIT) -> dict:
    """DuckDB settings for a connection that runs SQL a user wrote; the last one locks them."""
    return {
        "enable_external_access": False,       # no COPY TO, ATTACH, read_*, glob, INSTALL, LOAD
        "temp_directory": "",                  # nothing spilled, so no file SQL could read back
        "memory_limit": memory_limit,
        "allow_persistent_secrets": False,     # CREATE PERSISTENT SECRET would write a file
        "autoinstall_known_extensions": False,
        "autoload_known_extensions": False,
        "lock_configuration": True,            # no SET, PRAGMA, enable_logging, profiling_output
    }


def sandbox(memory_limit: str = READ_MEMORY_LIMIT) -> duckdb.DuckDBPyConnection:
    """An in-memory connection with `reader_config`: where a filter runs over registered rows."""
    return duckdb.connect(":memory:", config=reader_config(memory_limit))


def one_expression(text: str) -> str:
    """`text` as exactly one SQL expression, as DuckDB writes it back (so it cannot end the
    statement it is put into); ValueError naming the problem otherwise."""
    try:
        return str(duckdb.SQLExpression(text))
    except duckdb.Error as err:
        raise ValueError(f"--where must be one SQL condition, e.g. \"family = 'modular'\"; "
                         f"{text!r} is not: {str(err).splitlines()[0]}") from err


@contextlib.contextmanager
def time_limit(con: duckdb.DuckDBPyConnection, seconds: float) -> Iterator[None]:
    """Interrupt what `con` runs after `seconds` (DuckDB has no statement timeout of its own)."""
    timer = threading.Timer(seconds, con.interrupt)
    timer.daemon = True
    timer.start()
    try:
        yield
    except duckdb.InterruptException as err:
        raise StoreError(f"query stopped after {seconds:g} s, its time limit "
                         f"(raise it with --max-seconds)") from err
    finally:
        timer.cancel()


def _is_lock_error(err: Exception) -> bool:
    text = str(err).lower()
    return "lock" in text or "conflicting" in text


def lock_holder(err: Exception) -> str:
    """Who holds the store, from DuckDB's lock error: "PID 123 (grokloop sql SELECT ...)"."""
    match = re.search(r"PID (\d+)", str(err))
    if not match:
        return "another process"
    pid = match[1]
    try:
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().rstrip(b"\0").split(b"\0")
        command = " ".join(a.decode(errors="replace") for a in argv)
    except OSError:
        return f"PID {pid}"
    # "python .../bin/grokloop sql ..." -> "grokloop sql ..."
    command = re.sub(r"\s+", " ", re.sub(r"^\S*python[\d.]*\s+(\S*/)?", "", command))
    return f"PID {pid} ({command[:120]})"


class StoreLocked(StoreError):
    """Another process held the store for longer than we waited."""


def connect(
    path: str | Path | None = None,
    *,
    read_only: bool = False,
    timeout: float = 30.0,
    memory_limit: str = READ_MEMORY_LIMIT,
) -> duckdb.DuckDBPyConnection:
    """Open the store: `path`, else `storage.home.store_location()` ($GROKLOOP_STORE or the home's
    file). Writers migrate it; readers get `reader_config`. The embedded file waits up to
    `timeout` s for another process's lock, then raises StoreLocked naming it; a DuckLake store
    (`ducklake:...`) has no lock to wait for."""
    location = path or store_location()
    if lake.is_lake(location):
        try:
            con = lake.connect(str(location), read_only=read_only, home=grokloop_home(),
                               reader_config=reader_config(memory_limit))
        except lake.LakeError as err:
            raise StoreError(str(err)) from err
        if not read_only:
            try:
                migrate(con)
            except BaseException as err:
                con.close()
                if isinstance(err, lake.LakeError):
                    raise StoreError(str(err)) from err
                raise
        return con
    path = Path(location)
    if read_only and not path.exists():
        raise StoreError(f"no store at {path}: run `grokloop ingest` or `grokloop run loop` first")
    if not read_only:
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            raise StoreError(f"cannot create the grokloop home {path.parent}: {err.strerror} "
                             f"(set GROKLOOP_HOME or --home to a writable directory)") from err
    config = reader_config(memory_limit) if read_only else {}
    deadline = time.monotonic() + timeout
    delay = 0.05
    while True:
        try:
            con = duckdb.connect(str(path), read_only=read_only, config=config)
            break
        except duckdb.Error as err:
            if "newer version of DuckDB" in str(err):  # grokloop pinned DuckDB 2.0 before 1.5.5
                raise StoreError(
                    f"store {path} was written by a newer DuckDB (grokloop used 2.0 before it pinned "
                    f"{duckdb.__version__}); nothing in it was changed. Move it with that DuckDB: "
                    f"EXPORT DATABASE 'dir', then IMPORT DATABASE 'dir' here (README: Upgrading)") from err
            if not _is_lock_error(err):
                raise StoreError(f"cannot open store {path}: {str(err).splitlines()[0]}") from err
            if time.monotonic() >= deadline:
                raise StoreLocked(
                    f"store {path} is locked by {lock_holder(err)}, "
                    f"{'writing to it' if read_only else 'which has it open'}; waited {timeout:g} s. "
                    f"Let it finish, or retry with a longer --timeout") from err
            time.sleep(delay)
            delay = min(delay * 2, 1.0)
    if not read_only:
        migrate(con)
    else:  # this grokloop's views, even on a store last opened by an older one (one that trains on)
        for view in duckdb.extract_statements(reader_views(views_sql())):
            # one by one: a view the older schema cannot serve keeps the store's own, the rest are made
            with contextlib.suppress(duckdb.Error):
                con.execute(view.query)
    return con


def reader_views(sql: str) -> str:
    """views.sql as temporary views: a read-only connection cannot replace the stored views, and its
    temporary ones come first in DuckDB's search path."""
    return re.sub(r"CREATE OR REPLACE VIEW", "CREATE OR REPLACE TEMP VIEW", sql, flags=re.I)


@contextlib.contextmanager
def open_store(
    path: str | Path | None = None, *, read_only: bool = False, timeout: float = 30.0,
    memory_limit: str = READ_MEMORY_LIMIT,
) -> Iterator[duckdb.DuckDBPyConnection]:
    """`with open_store() as con:` — the connection is closed (and the lock released) on exit."""
    con = connect(path, read_only=read_only, timeout=timeout, memory_limit=memory_limit)
    try:
        yield con
    finally:
        con.close()
