"""Read-only SQL for researchers: `run_sql("SELECT ...")` -> a pyarrow Table.

The connection is opened read-only, so DuckDB itself refuses any write, and as the sandbox
`storage.store.reader_config` describes (no files outside the store, no temp directory, a memory
limit, settings locked) under a time limit; we catch each refusal and say so plainly. A query that meets the ingest writer's lock waits and retries (storage.store.connect)
and then names what holds it. The same store opens in the plain `duckdb` client and from Python
as Arrow / pandas / polars (`duckdb.connect(path, read_only=True).sql(q).pl()`).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import duckdb
import pyarrow as pa

from storage.store import READ_MEMORY_LIMIT, READ_SECONDS, StoreError, connect, time_limit

_WRITE_HINT = ("`grokloop sql` is read-only: it runs SELECT, SHOW, DESCRIBE, EXPLAIN and "
               "other read queries, with no access to files outside the store. Writes go through "
               "`grokloop ingest` and the pipeline.")


# What `grokloop sql` runs. The others can only fail on a read-only sandbox, except COPY TO the
# store's own WAL file and ATTACH of the store itself, which DuckDB allows (the database file is
# always on its allow-list): so they are refused by type, before DuckDB sees them.
_READ_STATEMENTS = {"SELECT", "EXPLAIN", "PRAGMA", "CALL"}
# Logging and profiling change settings, which DuckDB 2.0 refuses with the configuration locked;
# 1.5.5 lets `PRAGMA enable_profiling` through and checks `enable_logging`'s file access where its
# error cannot be caught (the process aborts). So they are refused by name, before DuckDB sees them.
_REFUSED_CALLS = re.compile(r"\b(enable_logging|disable_logging|enable_profil\w*|disable_profil\w*|"
                            r"profil\w*_output|profiling_mode)\b", re.I)
_SETTINGS_FIXED = ("refused: settings are fixed for read-only queries (SET, PRAGMA, logging, "
                   "profiling); `grokloop sql --memory-limit/--max-seconds` set the limits.")


def _check_statements(sql: str) -> None:
    try:
        statements = duckdb.extract_statements(sql)
    except duckdb.Error as err:
        raise StoreError(f"query failed: {err}") from err
    for statement in statements:
        kind = statement.type.name
        if _REFUSED_CALLS.search(statement.query):
            raise StoreError(_SETTINGS_FIXED)
        if kind not in _READ_STATEMENTS:
            raise StoreError(f"refused: {kind} statement. {_WRITE_HINT} Use `grokloop sql --output FILE` "
                             f"to save a result.")


def run_sql(
    sql: str,
    params: list[Any] | dict[str, Any] | None = None,
    *,
    path: str | Path | None = None,
    timeout: float = 30.0,
    max_seconds: float = READ_SECONDS,
    memory_limit: str = READ_MEMORY_LIMIT,
    tables: Mapping[str, pa.Table] | None = None,
) -> pa.Table:
    """Run `sql` on a read-only, sandboxed connection to the store (waiting up to `timeout` s for
    a writer), stopped after `max_seconds`; the result as an Arrow table. `tables`: Arrow tables the
    query may name beside the store's (read here, so the sandbox still reads no file itself)."""
    if not sql or not sql.strip():
        raise StoreError("empty query: pass a SQL statement, e.g. SELECT * FROM success_rate")
    _check_statements(sql)
    con = connect(path, read_only=True, timeout=timeout, memory_limit=memory_limit)
    try:
        for name, table in (tables or {}).items():
            con.register(name, table)
        with time_limit(con, max_seconds):
            relation = con.sql(sql, params=params)
            if relation is None:  # a statement without rows (SET, PRAGMA ...)
                return pa.table({})
            return relation.to_arrow_table()
    except duckdb.Error as err:
        text = str(err)
        said = f"(DuckDB said: {text.splitlines()[0]})"
        if "read-only" in text.lower() or "read only" in text.lower():
            raise StoreError(f"refused: the statement writes to the store. {_WRITE_HINT} {said}") from err
        if "external access" in text.lower() or "disabled by configuration" in text.lower() \
                or "disabled through configuration" in text.lower():
            raise StoreError(f"refused: the statement reads or writes files outside the store "
                             f"(COPY ... TO, ATTACH, read_csv, INSTALL, LOAD ...). {_WRITE_HINT} Use "
                             f"`grokloop sql --output FILE` to save a result. {said}") from err
        if "configuration has been locked" in text:
            raise StoreError(f"{_SETTINGS_FIXED} {said}") from err
        if isinstance(err, duckdb.OutOfMemoryException):
            raise StoreError(f"query needs more than its memory limit of {memory_limit} (raise it "
                             f"with --memory-limit, or aggregate in SQL). {said}") from err
        raise StoreError(f"query failed: {text}") from err
    finally:
        con.close()
