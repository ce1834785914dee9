"""Issue 14, failures 2 and 3: user SQL can neither change the store nor touch files nor crash.

`--where` is exactly one expression, evaluated on a sandbox; every read path runs read-only with
external access off, no temp directory, a memory limit, a time limit and its settings locked.
Each escape is tried in a child process, so an abort (DuckDB's uncaught exceptions) shows as a
crash here instead of killing the test run."""

from __future__ import annotations

import json
import subprocess
import sys

import orjson
import pytest

from storage.datasets import SnapshotSpec, select_trajectories
from storage.ingest import ingest_paths
from storage.query import run_sql
from storage.store import StoreError, connect

TID = "01900000-0000-7000-8000-0000000000d1"


@pytest.fixture
def store(tmp_path):
    records = [{"type": "trajectory", "trajectory_id": TID, "agent": {"name": "a", "version": "1"},
                "task": {"family": "modular", "task_id": "m/1"}},
               *({"type": "step", "trajectory_id": TID, "index": i, "result": i} for i in range(3)),
               {"type": "outcome", "trajectory_id": TID, "status": "ok", "verified": True, "answer": [1]}]
    src = tmp_path / "in.jsonl"
    src.write_bytes(b"".join(orjson.dumps(r) + b"\n" for r in records))
    path = tmp_path / "store.duckdb"
    con = connect(path)
    ingest_paths(con, [src])
    con.close()
    return path


def counts(path):
    con = connect(path, read_only=True)
    try:
        return con.execute("SELECT (SELECT count(*) FROM steps), (SELECT count(*) FROM trajectories)").fetchall()
    finally:
        con.close()


def test_dataset_where_with_stacked_statements_is_refused_and_nothing_changes(store):
    con = connect(store)
    spec = SnapshotSpec(family="modular", where="true; DELETE FROM steps WHERE true; "
                                                  "SELECT * FROM _grokloop_selected WHERE true")
    with pytest.raises(ValueError, match="must be one SQL condition"):
        select_trajectories(con, spec)
    con.close()
    assert counts(store) == [(3, 1)]


def test_dataset_where_runs_on_a_sandbox_without_files(store, tmp_path):
    con = connect(store)
    target = tmp_path / "leak.csv"
    spec = SnapshotSpec(family="modular", where=f"(SELECT count(*) FROM read_text('{store.parent / 'in.jsonl'}')) > 0")
    with pytest.raises(ValueError, match="bad where condition"):
        select_trajectories(con, spec)
    ok = select_trajectories(con, SnapshotSpec(family="modular", where="task_id = ?", where_params=["m/1"]))
    con.close()
    assert ok.num_rows == 1 and not target.exists()


@pytest.mark.parametrize("fmt", ["atif", "jsonl"])
def test_export_where_injection_is_refused_and_writes_no_file(store, tmp_path, fmt, monkeypatch):
    monkeypatch.setenv("GROKLOOP_HOME", str(store.parent))
    leak, out = tmp_path / "x.csv", tmp_path / "out.jsonl"
    result = subprocess.run(
        [sys.executable, "-m", "flows.cli", "export", "--format", fmt, "--output", str(out),
         "--where", f"false; COPY (SELECT 'x') TO '{leak}'; SELECT 1"],
        capture_output=True, text=True, timeout=120)
    assert result.returncode == 2, result.stderr
    assert "one SQL condition" in result.stderr and "Traceback" not in result.stderr
    assert not leak.exists() and not out.exists()
    # a subquery that reads a file is one expression, but the sandbox refuses the file
    result = subprocess.run(
        [sys.executable, "-m", "flows.cli", "export", "--format", fmt, "--output", str(out),
         "--where", f"(SELECT count(*) FROM read_text('{store.parent / 'in.jsonl'}')) > 0"],
        capture_output=True, text=True, timeout=120)
    assert result.returncode == 2 and "disabled by configuration" in result.stderr
    assert counts(store) == [(3, 1)]


def test_export_with_a_plain_where_still_works(store, tmp_path):
    from storage.atif import export_atif
    from storage.export import export_jsonl

    con = connect(store, read_only=True)
    assert export_atif(con, tmp_path / "a.jsonl", "family = 'modular'") == 1
    assert export_jsonl(con, tmp_path / "b.jsonl", "family = 'other'") == 0
    con.close()
    assert orjson.loads((tmp_path / "a.jsonl").read_text())["session_id"] == TID


ESCAPES = [
    "COPY (SELECT 1) TO '{tmp}/x.csv'",
    "COPY (SELECT 1) TO '{store}.wal'",       # the store's own files are on DuckDB's allow-list
    "ATTACH '{store}' AS again",
    "ATTACH '{tmp}/y.duckdb' AS y",
    "SELECT * FROM read_text('{outside}')",
    "SELECT * FROM glob('{tmp}/*')",
    "INSTALL httpfs",
    "LOAD httpfs",
    "EXPORT DATABASE '{tmp}/exp'",
    "CALL enable_logging(storage='file', storage_config={{'path': '{tmp}/logs'}})",
    "CALL enable_logging()",
    "PRAGMA enable_profiling",
    "PRAGMA profiling_output = '{tmp}/profile.json'",
    "SET log_query_path = '{tmp}/queries.log'",
    "SET threads = 1",
    "SET memory_limit = '100GB'",
    "SET extension_directory = '{tmp}/ext'",
    "SET temp_directory = '{tmp}/spill'",
    "SET enable_external_access = true",
    "RESET lock_configuration",
    "CREATE PERSISTENT SECRET s (TYPE http, BEARER_TOKEN 'x')",
    "SELECT 1; DELETE FROM steps",
    "DROP TABLE steps",
]


TRY_ALL = """
import json, sys
from storage.query import run_sql
from storage.store import StoreError
for query in json.loads(sys.argv[1]):
    try:
        run_sql(query)
        print(json.dumps([query, "ran"]), flush=True)
    except StoreError as err:
        print(json.dumps([query, str(err)]), flush=True)
"""


def test_each_sql_escape_is_refused_without_a_crash(store, tmp_path, monkeypatch):
    monkeypatch.setenv("GROKLOOP_HOME", str(store.parent))
    monkeypatch.setenv("HOME", str(tmp_path))  # where DuckDB would keep persistent secrets
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    queries = [q.format(tmp=scratch, store=store, outside=store.parent / "in.jsonl") for q in ESCAPES]
    # One child process for all of them: an abort (exit 134) would cut its output short.
    result = subprocess.run([sys.executable, "-c", TRY_ALL, json.dumps(queries)],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    outcomes = dict(json.loads(line) for line in result.stdout.splitlines())
    assert list(outcomes) == queries
    assert {q: o for q, o in outcomes.items() if not o.startswith("refused")} == {}
    assert list(scratch.iterdir()) == [] and not (tmp_path / ".duckdb").exists()
    assert not store.with_name(store.name + ".wal").exists()
    assert counts(store) == [(3, 1)]


def test_the_cli_says_refused_in_one_line(store, monkeypatch):
    monkeypatch.setenv("GROKLOOP_HOME", str(store.parent))
    result = subprocess.run([sys.executable, "-m", "flows.cli", "sql", "CALL enable_logging()"],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 2 and result.stderr.startswith("error: refused: settings are fixed")
    assert len(result.stderr.splitlines()) == 1
    assert "Traceback" not in result.stderr


def test_spilling_has_no_temp_directory_and_a_query_has_limits(store):
    # No temp directory: a query past its memory limit fails cleanly instead of spilling to a
    # file that COPY could then write beside and read_text read back.
    with pytest.raises(StoreError, match="memory limit of 20MB"):
        run_sql("SELECT list(range) FROM range(20000000)", path=store, memory_limit="20MB")
    settings = run_sql("SELECT current_setting('temp_directory') AS t, current_setting('lock_configuration') AS l,"
                       " current_setting('enable_external_access') AS e", path=store).to_pylist()
    assert settings == [{"t": "", "l": True, "e": False}]
    with pytest.raises(StoreError, match="stopped after 0.5 s"):
        run_sql("SELECT count(*) FROM range(10000000000) a", path=store, max_seconds=0.5)
