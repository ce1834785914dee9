"""Tokens, cost and model as columns: migration 0002 on a store made at schema 1, the SDK's usage
fields through both wire formats, old segments without them, bad values quarantined, the usage view."""

from __future__ import annotations

import duckdb
import orjson
import pyarrow as pa
import pytest

import storage.store as store
from agents.sdk import TrajectoryLogger
from storage.ingest import ingest_paths, ingest_spool
from storage.spool import SCHEMA, USAGE_COLUMNS, write_segment
from storage.store import connect, schema_version

TID = "01900000-0000-7000-8000-0000000000a1"


def _schema_1_store(path):
    """A store as grokloop made it before migration 0002: 0001 applied, its views, some rows."""
    version, name, sql = store.migrations()[0]
    assert (version, name) == (1, "init")
    con = duckdb.connect(str(path))
    con.execute("CREATE TABLE schema_version (version INTEGER PRIMARY KEY, name VARCHAR NOT NULL,"
                " applied_at TIMESTAMP NOT NULL DEFAULT now())")
    con.execute(sql)
    con.execute("INSERT INTO schema_version (version, name) VALUES (1, 'init')")
    con.execute(store.views_sql().split("CREATE OR REPLACE VIEW usage")[0])  # the views of schema 1
    con.execute("INSERT INTO agents (agent_id, name, version) VALUES ('old@1', 'old', '1')")
    con.execute("INSERT INTO tasks (task_id, family) VALUES ('t1', 'modular')")
    con.execute(f"INSERT INTO trajectories (trajectory_id, agent_id, task_id, family, status, n_steps) "
                f"VALUES ('{TID}', 'old@1', 't1', 'modular', 'ok', 2)")
    con.execute(f"INSERT INTO steps (trajectory_id, idx, kind, tool_name, result) VALUES "
                f"('{TID}', 0, 'tool_call', 'add', '3'), ('{TID}', 1, 'answer', NULL, '[3]')")
    con.close()


def test_a_schema_1_store_upgrades_in_place_and_keeps_its_rows(tmp_path):
    path = tmp_path / "store.duckdb"
    _schema_1_store(path)
    con = connect(path)
    assert schema_version(con) == 2
    assert con.execute("SELECT version, name FROM schema_version ORDER BY 1").fetchall() == [
        (1, "init"), (2, "usage")]
    assert con.execute("SELECT idx, tool_name, result, model, input_tokens, cost_usd, call_id, turn "
                       "FROM steps ORDER BY idx").fetchall() == [
        (0, "add", "3", None, None, None, None, None), (1, None, "[3]", None, None, None, None, None)]
    assert con.execute("SELECT trajectory_id::VARCHAR, model FROM trajectories").fetchall() == [(TID, None)]
    assert con.execute("SELECT steps FROM step_counts").fetchall() == [(2,)]  # old views still work
    # New data lands beside the old rows, and the usage view sees both.
    log = TrajectoryLogger("new", "2", spool=tmp_path / "spool")
    with log.trajectory({"family": "modular", "task_id": "t2"}, model="m-large") as t:
        t.step(kind="llm", model="m-small", input_tokens=10, output_tokens=5, cost_usd=0.5)
    log.close()
    assert ingest_spool(con, tmp_path / "spool").steps == 1
    rows = con.execute("SELECT agent_id, model, calls, tokens, cost_usd FROM usage ORDER BY agent_id").fetchall()
    assert rows == [("new@2", "m-small", 1, 15, 0.5), ("old@1", None, 2, 0, None)]
    con.close()
    assert schema_version(connect(path, read_only=True)) == 2  # applied once


def _usage_trajectory(log, model="gpt-x"):
    with log.trajectory({"family": "external", "task_id": "fix-bug"}, model=model,
                        start_time="2026-01-01T00:00:00Z") as t:
        turn = t.step(kind="llm", model=model, input_tokens=1200, output_tokens=80, cost_usd=0.0031,
                      start_time="2026-01-01T00:00:00Z")
        for i, name in enumerate(["read", "grep", "run"]):  # three parallel tool calls of one turn
            t.step(tool_name=name, arguments={"i": i}, result=f"out{i}", call_id=f"call_{name}", turn=turn,
                   start_time="2026-01-01T00:00:01Z")
        t.finish(answer="done", verified=True)


def test_usage_fields_land_in_columns_from_arrow_and_jsonl_alike(tmp_path):
    log = TrajectoryLogger("coder", "1", spool=tmp_path / "spool")
    _usage_trajectory(log)
    log.close()
    con = connect(tmp_path / "a.duckdb")
    ingest_spool(con, tmp_path / "spool")
    query = ("SELECT idx, kind, tool_name, model, input_tokens, output_tokens, cost_usd, call_id, turn "
             "FROM steps ORDER BY idx")
    rows = con.execute(query).fetchall()
    assert rows == [(0, "llm", None, "gpt-x", 1200, 80, 0.0031, None, None),
                    (1, "tool_call", "read", None, None, None, None, "call_read", 0),
                    (2, "tool_call", "grep", None, None, None, None, "call_grep", 0),
                    (3, "tool_call", "run", None, None, None, None, "call_run", 0)]
    assert con.execute("SELECT model FROM trajectories").fetchall() == [("gpt-x",)]
    usage = con.execute("SELECT agent_id, model, day::VARCHAR, trajectories, calls, model_calls, tool_calls, "
                        "input_tokens, output_tokens, tokens, cost_usd FROM usage").fetchall()
    assert usage == [("coder@1", "gpt-x", "2026-01-01", 1, 4, 1, 3, 1200, 80, 1280, 0.0031)]
    # The same records as JSON lines (grokloop's own export) land the same columns in another store.
    from storage.export import export_jsonl

    export_jsonl(con, tmp_path / "out.jsonl")
    other = connect(tmp_path / "b.duckdb")
    assert ingest_paths(other, [tmp_path / "out.jsonl"]).quarantined == 0
    assert other.execute(query).fetchall() == rows


def test_usage_view_latency_percentiles(tmp_path):
    log = TrajectoryLogger("a", "1", spool=tmp_path / "spool")
    with log.trajectory({"family": "f", "task_id": "t"}, model="m", start_time="2026-01-01T00:00:00Z") as t:
        for ms in (100, 200, 300, 400, 1000):
            t.step(kind="llm", input_tokens=1, start_time=f"2026-01-01T00:00:00.{1000 - ms:03d}Z")
    log.close()
    con = connect(tmp_path / "s.duckdb")
    ingest_spool(con, tmp_path / "spool")
    # end_time is when step() was called, so latency = now - start; force known values instead.
    con.execute("UPDATE steps SET end_time = TIMESTAMP '2026-01-01 00:00:01'")
    p50, p95 = con.execute("SELECT p50_latency_ms, p95_latency_ms FROM usage").fetchall()[0]
    assert p50 == pytest.approx(300.0) and p95 == pytest.approx(880.0)


def test_a_version_2_segment_without_usage_columns_still_ingests(tmp_path):
    old = pa.schema([f for f in SCHEMA if f.name not in USAGE_COLUMNS], metadata={"grokloop.format_version": "2"})
    tid = bytes.fromhex("01900000000070008000000000000043")
    rows = [{"type": "trajectory", "trajectory_id": tid, "agent_name": "old", "agent_version": "1",
             "task_family": "f", "task_id": "t"},
            {"type": "step", "trajectory_id": tid, "index": 0, "tool_name": "add", "result": "3"},
            {"type": "outcome", "trajectory_id": tid, "status": "ok", "n_steps": 1}]
    table = pa.Table.from_pylist([dict.fromkeys(old.names) | r for r in rows], schema=old)
    sink = pa.BufferOutputStream()
    with pa.ipc.new_file(sink, old) as writer:
        writer.write_table(table)
    write_segment(tmp_path / "spool", sink.getvalue())
    con = connect(tmp_path / "store.duckdb")
    report = ingest_spool(con, tmp_path / "spool")
    assert (report.trajectories, report.steps, report.quarantined) == (1, 1, 0)
    assert con.execute("SELECT tool_name, result, model, input_tokens FROM steps").fetchall() == [
        ("add", "3", None, None)]


def test_bad_usage_values_are_refused_at_the_call_and_quarantined_at_ingest(tmp_path):
    log = TrajectoryLogger("a", "1", spool=tmp_path / "spool")
    t = log.trajectory({"family": "f", "task_id": "t"})
    for bad in ({"input_tokens": -1}, {"output_tokens": 1.5}, {"input_tokens": True}, {"turn": 5}):
        with pytest.raises(ValueError):
            t.step(**bad)
    t.finish()
    log.close()
    records = [{"type": "trajectory", "trajectory_id": TID, "agent": {"name": "x"},
                "task": {"family": "f", "task_id": "t"}, "model": "m"}]
    bad_steps = [({"input_tokens": -3}, "wrong type: input_tokens and output_tokens must be non-negative integers"),
                 ({"output_tokens": "many"}, "wrong type: input_tokens and output_tokens must be non-negative integers"),
                 ({"cost_usd": "NaN"}, 'NaN or infinite cost_usd: "NaN"'),
                 ({"cost_usd": "cheap"}, "wrong type: cost_usd must be a number"),
                 ({"model": 7}, "wrong type: model and call_id must be strings"),
                 ({"turn": 9}, "wrong type: turn must be the index of an earlier step (or its own)")]
    records += [{"type": "step", "trajectory_id": TID, "index": i, **fields} for i, (fields, _) in enumerate(bad_steps)]
    records.append({"type": "step", "trajectory_id": TID, "index": 9, "input_tokens": 4, "turn": 0})
    path = tmp_path / "in.jsonl"
    path.write_bytes(b"".join(orjson.dumps(r) + b"\n" for r in records))
    con = connect(tmp_path / "store.duckdb")
    report = ingest_paths(con, [path])
    assert (report.steps, report.quarantined) == (1, len(bad_steps))
    assert [r[0] for r in con.execute("SELECT reason FROM quarantine ORDER BY line_no").fetchall()] == [
        reason for _, reason in bad_steps]
    assert con.execute("SELECT idx, input_tokens, turn FROM steps").fetchall() == [(9, 4, 0)]


def test_a_stored_step_is_not_changed_by_a_later_one_with_other_usage(tmp_path):
    from storage.export import export_jsonl

    log = TrajectoryLogger("coder", "1", spool=tmp_path / "spool")
    _usage_trajectory(log)
    log.close()
    con = connect(tmp_path / "store.duckdb")
    ingest_spool(con, tmp_path / "spool")
    export_jsonl(con, tmp_path / "out.jsonl")
    lines = (tmp_path / "out.jsonl").read_bytes().splitlines()
    step = orjson.loads(lines[1])
    assert step["type"] == "step" and step["input_tokens"] == 1200
    (tmp_path / "same.jsonl").write_bytes(lines[1] + b"\n")
    (tmp_path / "other.jsonl").write_bytes(orjson.dumps({**step, "input_tokens": 999999}) + b"\n")
    assert ingest_paths(con, [tmp_path / "same.jsonl"]).quarantined == 0  # the same record again: nothing
    assert ingest_paths(con, [tmp_path / "other.jsonl"]).quarantined == 1
    assert con.execute("SELECT input_tokens FROM steps WHERE idx = 0").fetchall() == [(1200,)]
    assert "conflicts with the stored step" in con.execute("SELECT reason FROM quarantine").fetchall()[0][0]
