"""Each kind of bad record goes to quarantine with its reason and exact bytes; its good neighbours land."""

from __future__ import annotations

import json
import uuid

import orjson
import pyarrow as pa
import pytest

from agents.sdk import TrajectoryLogger
from storage.ingest import ingest_paths, ingest_spool
from storage.spool import SCHEMA, published_segments
from storage.store import connect

TID = "01900000-0000-7000-8000-00000000000a"
START = {"v": 1, "type": "trajectory", "trajectory_id": TID, "agent": {"name": "a", "version": "1"},
         "task": {"family": "modular", "task_id": "m/1"}}


def step(index, **fields):
    return {"v": 1, "type": "step", "trajectory_id": TID, "index": index, "result": index, **fields}


def line(record) -> bytes:
    return orjson.dumps(record)


BAD = {
    "missing field: trajectory_id": line({"type": "step", "index": 7}),
    "missing field: index": line({"type": "step", "trajectory_id": TID}),
    "missing field: task.family": line({**START, "trajectory_id": "01900000-0000-7000-8000-0000000000bb",
                                        "task": {"task_id": "x"}}),
    "missing field: type": line({"trajectory_id": TID}),
    "wrong type: index must be a non-negative integer": line(step("three")),
    "wrong type: trajectory_id must be a UUID string": line(step(8) | {"trajectory_id": 42}),
    "wrong type: reward must be a number": line(step(9, reward="high")),
    "wrong type: verified must be true, false or null": line(
        {"type": "outcome", "trajectory_id": TID, "status": "ok", "verified": "yes"}),
    "invalid JSON": b'{"type": "step", "trajectory_id": "' + TID.encode() + b'", "index": ',
    "not a JSON object": b"[1, 2, 3]",
    "not UTF-8": b'{"type": "step", "note": "caf\xe9"}',
    "NaN or infinite reward": line(step(10, reward="nan")),
    "unknown record type": line({"type": "span", "trajectory_id": TID}),
}


def test_each_bad_record_is_quarantined_and_neighbours_land(tmp_path):
    good = [line(START), line(step(0)), line(step(1, reward=0.5))]
    bad = list(BAD.values())
    # Interleave: good, bad, good, bad ... so every bad line has good neighbours in the same file.
    lines = [good[0]] + [x for pair in zip(bad, [line(step(i)) for i in range(2, 2 + len(bad))], strict=True)
                         for x in pair] + good[1:]
    lines.append(line(step(0, result="again")))         # duplicate step index within the segment
    lines.append(b'{"type": "step", "pad": "' + b"x" * 3000 + b'"}')  # oversized at a 2 KB limit
    lines.append(line({"type": "outcome", "trajectory_id": TID, "status": "ok", "answer": [1],
                       "verified": True, "n_steps": 99}))
    path = tmp_path / "mixed.jsonl"
    path.write_bytes(b"\n".join(lines) + b"\n")

    con = connect(tmp_path / "store.duckdb")
    report = ingest_paths(con, [path], max_record_bytes=2048)
    rows = con.execute("SELECT line_no, raw, reason FROM quarantine ORDER BY line_no").fetchall()
    reasons = [r[2] for r in rows]
    for expected in BAD:
        assert sum(r.startswith(expected) for r in reasons) == 1, (expected, reasons)
    assert any(r.startswith("duplicate step index 0") for r in reasons)
    oversized = len(lines[-2])
    assert f"oversized record: {oversized} bytes > limit of 2048" in reasons
    assert report.quarantined == len(rows) == len(BAD) + 2
    # Exactly the bytes received, at the line they were on.
    for line_no, raw, _ in rows:
        assert raw == lines[line_no - 1]
    # The good neighbours all landed, and the first step 0 won over its duplicate.
    assert con.execute("SELECT count(*) FROM steps").fetchall() == [(2 + len(bad),)]
    assert con.execute("SELECT result FROM steps WHERE idx = 0").fetchall() == [("0",)]
    assert con.execute("SELECT status, verified, n_steps FROM trajectories").fetchall() == [("ok", True, 99)]
    logged = con.execute("SELECT n_records, n_trajectories, n_steps, n_quarantined FROM ingest_log").fetchall()
    assert logged == [(len(lines), 1, 2 + len(bad), len(BAD) + 2)]


def test_sdk_nan_reward_is_quarantined_not_hidden(tmp_path):
    spool = tmp_path / "spool"
    log = TrajectoryLogger("a", "1", spool=spool)
    with log.trajectory({"family": "modular", "task_id": "m/1"}) as t:
        t.step(result=1, reward=float("nan"))
        t.step(result=2, reward=float("inf"))
        t.step(result=3, reward=1.0)
    log.close()
    con = connect(tmp_path / "store.duckdb")
    ingest_spool(con, spool)
    assert con.execute("SELECT reason FROM quarantine ORDER BY line_no").fetchall() == [
        ("NaN or infinite reward: nan",), ("NaN or infinite reward: inf",)]
    assert con.execute("SELECT idx, reward FROM steps").fetchall() == [(2, 1.0)]


def test_outcome_without_its_start_is_quarantined(tmp_path):
    path = tmp_path / "orphan.jsonl"
    path.write_bytes(line({"type": "outcome", "trajectory_id": TID, "status": "ok"}) + b"\n")
    con = connect(tmp_path / "store.duckdb")
    assert ingest_paths(con, [path]).quarantined == 1
    (reason,) = con.execute("SELECT reason FROM quarantine").fetchall()[0]
    assert reason.startswith(f"outcome for unknown trajectory {TID}")
    assert con.execute("SELECT count(*) FROM trajectories").fetchall() == [(0,)]


def test_a_failed_batch_stores_nothing(tmp_path, monkeypatch):
    spool = tmp_path / "spool"
    log = TrajectoryLogger("a", "1", spool=spool)
    with log.trajectory({"family": "modular", "task_id": "m/1"}) as t:
        t.step(result=1)
    log.close()
    con = connect(tmp_path / "store.duckdb")
    import storage.ingest as ingest

    blocks = [(n, "SELECT * FROM no_such_table" if n == "insert_steps" else sql) for n, sql in ingest._BLOCKS]
    monkeypatch.setattr(ingest, "_BLOCKS", blocks)
    from storage.store import StoreError

    with pytest.raises(StoreError, match="rolled back; nothing was stored"):
        ingest_spool(con, spool)
    for table in ("trajectories", "steps", "quarantine", "ingest_log"):
        assert con.execute(f"SELECT count(*) FROM {table}").fetchall() == [(0,)], table
    assert len(published_segments(spool)) == 1  # left in the spool for the next try


def arrow_segment(rows: list[dict]) -> bytes:
    """A hand-made Arrow segment: `rows` as records of the SDK's schema, absent columns null."""
    table = pa.Table.from_pylist([dict.fromkeys(SCHEMA.names) | row for row in rows], schema=SCHEMA)
    sink = pa.BufferOutputStream()
    with pa.ipc.new_file(sink, SCHEMA) as writer:
        writer.write_table(table)
    return sink.getvalue().to_pybytes()


def test_each_bad_arrow_record_is_quarantined_and_neighbours_land(tmp_path):
    tid = uuid.UUID(TID)
    start = {"type": "trajectory", "trajectory_id": tid, "agent_name": "a", "agent_version": "1",
             "task_family": "modular", "task_id": "m/1", "tags": ["x"], "metadata": "{}"}

    def step(index, **fields):
        return {"type": "step", "trajectory_id": tid, "index": index, "result": json.dumps(index), **fields}

    rows = [
        start,
        step(0),
        step(1, reward=float("nan")),
        step(-1),
        step(2, reward=0.5),
        step(0, result='"again"'),                                        # duplicate index
        step(3, observation='"' + "x" * 3000 + '"'),                      # oversized at 2 KB
        step(4, arguments="{bad"),
        step(None),
        {"type": "span", "trajectory_id": tid},
        {"type": None, "trajectory_id": tid},
        step(5) | {"trajectory_id": None},
        start | {"trajectory_id": uuid.UUID("01900000-0000-7000-8000-0000000000bb"), "agent_name": None},
        {"type": "outcome", "trajectory_id": tid, "reward": float("inf")},
        step(6),
        {"type": "outcome", "trajectory_id": tid, "status": "ok", "answer": "[1]", "verified": True,
         "n_steps": 99, "reward": 1.0},
    ]
    path = tmp_path / "hand-made.arrow"
    path.write_bytes(arrow_segment(rows))
    con = connect(tmp_path / "store.duckdb")
    report = ingest_paths(con, [path], max_record_bytes=2048)

    quarantined = con.execute("SELECT line_no, raw, reason FROM quarantine ORDER BY line_no").fetchall()
    assert [(n, reason) for n, _, reason in quarantined] == [
        (3, "NaN or infinite reward: nan"),
        (4, "wrong type: index must be a non-negative integer"),
        (6, f"duplicate step index 0 for trajectory {TID} conflicts with the one in {path} line 2"),
        (7, "oversized record: 3003 bytes > limit of 2048"),  # its JSON and error text
        (8, "invalid JSON in arguments"),
        (9, "missing field: index"),
        (10, "unknown record type: span"),
        (11, "missing field: type"),
        (12, "missing field: trajectory_id"),
        (13, "missing field: agent.name"),
        (14, "NaN or infinite reward: inf"),
    ]
    # The raw text of an Arrow record is the row as JSON (a line number is its row in the file).
    for line_no, raw, _ in quarantined:
        record = json.loads(raw)
        assert record["type"] == rows[line_no - 1]["type"] and set(record) == set(SCHEMA.names)
    assert json.loads(quarantined[1][1])["index"] == -1
    assert json.loads(quarantined[4][1])["arguments"] == "{bad"
    # The good neighbours landed; the first step 0 won over its duplicate.
    assert con.execute("SELECT idx, result, reward FROM steps ORDER BY idx").fetchall() == [
        (0, "0", None), (2, "2", 0.5), (6, "6", None)]
    assert con.execute("SELECT status, verified, n_steps, reward, answer, tags FROM trajectories").fetchall() == [
        ("ok", True, 99, 1.0, "[1]", ["x"])]
    assert report.quarantined == len(quarantined) == 11
    assert con.execute("SELECT format, n_records, n_trajectories, n_steps, n_quarantined FROM ingest_log"
                       ).fetchall() == [("arrow", len(rows), 1, 3, 11)]
    assert ingest_paths(con, [path]).skipped == 1  # exactly once


def test_a_step_twice_in_a_clean_arrow_batch_is_quarantined_once(tmp_path):
    # Nothing else is wrong with these records, so the batch is first tried without looking for
    # duplicate steps; the steps' primary key refuses it, and the retry quarantines the second.
    tid = uuid.UUID(TID)
    start = {"type": "trajectory", "trajectory_id": tid, "agent_name": "a", "agent_version": "1",
             "task_family": "modular", "task_id": "m/1"}

    def step(index, result):
        return {"type": "step", "trajectory_id": tid, "index": index, "result": json.dumps(result)}

    first, second = tmp_path / "a.arrow", tmp_path / "b.arrow"
    first.write_bytes(arrow_segment([start, step(0, "a"), step(1, "first")]))
    second.write_bytes(arrow_segment([step(1, "second"), step(2, "c"),
                                      {"type": "outcome", "trajectory_id": tid, "status": "ok", "n_steps": 3}]))
    con = connect(tmp_path / "store.duckdb")
    report = ingest_paths(con, [first, second])

    assert (report.segments, report.trajectories, report.steps, report.quarantined) == (2, 1, 3, 1)
    assert con.execute("SELECT idx, result FROM steps ORDER BY idx").fetchall() == [
        (0, '"a"'), (1, '"first"'), (2, '"c"')]
    assert con.execute("SELECT source, line_no, reason FROM quarantine").fetchall() == [
        (str(second), 1, f"duplicate step index 1 for trajectory {TID} conflicts with the one in {first} line 3")]
    assert con.execute("SELECT count(*), any_value(status), any_value(n_steps) FROM trajectories").fetchall() == [
        (1, "ok", 3)]
    assert con.execute("SELECT source, n_trajectories, n_steps, n_quarantined FROM ingest_log ORDER BY source"
                       ).fetchall() == [(str(first), 1, 2, 0), (str(second), 0, 1, 1)]
