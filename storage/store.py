"""Opening the DuckDB store: migrations, the one writer, read-only readers that wait.

DuckDB allows one read-write process per file (DESIGN decision 1). The writer
(ingest, curation, training metrics) holds its connection briefly; readers open
read-only and, when they meet the writer's lock, retry before giving up with a
message that says what holds the file.
"""

from __future__ import annotations

import contextlib
import re
import time
from collections.abc import Iterator
from importlib import resources
from pathlib import Path

import duckdb

from storage.home import store_path


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


def views_sql() -> str:
    return resources.files("storage.sql").joinpath("views.sql").read_text()


def schema_version(con: duckdb.DuckDBPyConnection) -> int:
    exists = con.execute(
        "SELECT count(*) FROM information_schema.tables WHERE table_name = 'schema_version'"
    ).fetchall()[0][0]
    if not exists:
        return 0
    return con.execute("SELECT coalesce(max(version), 0) FROM schema_version").fetchall()[0][0]


def migrate(con: duckdb.DuckDBPyConnection) -> int:
    """Apply every migration newer than the store's version, each in its own transaction."""
    con.execute(
        "CREATE TABLE IF NOT EXISTS schema_version ("
        " version INTEGER PRIMARY KEY, name VARCHAR NOT NULL,"
        " applied_at TIMESTAMP NOT NULL DEFAULT now())"
    )
    current = schema_version(con)
    for version, name, sql in migrations():
        if version <= current:
            continue
        con.execute("BEGIN")
        try:
            con.execute(sql)
            con.execute("INSERT INTO schema_version (version, name) VALUES (?, ?)", [version, name])
            con.execute("COMMIT")
        except duckdb.Error as err:
            con.execute("ROLLBACK")
            raise StoreError(f"migration {version:04d}_{name}.sql failed: {err}") from err
    # Views are recreated every open so a newer grokloop's views replace older ones.
    con.execute(views_sql())
    return schema_version(con)


def _is_lock_error(err: Exception) -> bool:
    text = str(err).lower()
    return "lock" in text or "conflicting" in text


def connect(
    path: str | Path | None = None,
    *,
    read_only: bool = False,
    timeout: float = 30.0,
) -> duckdb.DuckDBPyConnection:
    """Open the store. Writers migrate it; readers wait up to `timeout` s for the writer's lock."""
    path = Path(path) if path else store_path()
    if read_only and not path.exists():
        raise StoreError(f"no store at {path}: run `grokloop ingest` or `grokloop run loop` first")
    if not read_only:
        path.parent.mkdir(parents=True, exist_ok=True)
    deadline = time.monotonic() + timeout
    delay = 0.05
    while True:
        try:
            con = duckdb.connect(str(path), read_only=read_only)
            break
        except duckdb.Error as err:
            if not _is_lock_error(err):
                raise StoreError(f"cannot open store {path}: {err}") from err
            if time.monotonic() >= deadline:
                raise StoreError(
                    f"store {path} is locked by another process (usually `grokloop ingest` or a "
                    f"training run writing to it) and stayed locked for {timeout:.0f} s. "
                    f"Wait for it to finish or retry with a longer timeout. DuckDB said: {err}"
                ) from err
            time.sleep(delay)
            delay = min(delay * 2, 1.0)
    if not read_only:
        migrate(con)
    return con


@contextlib.contextmanager
def open_store(
    path: str | Path | None = None, *, read_only: bool = False, timeout: float = 30.0
) -> Iterator[duckdb.DuckDBPyConnection]:
    """`with open_store() as con:` — the connection is closed (and the lock released) on exit."""
    con = connect(path, read_only=read_only, timeout=timeout)
    try:
        yield con
    finally:
        con.close()
