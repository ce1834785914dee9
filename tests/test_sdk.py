"""The logging SDK: wire format, time-ordered ids, flushing by size and at close, spool atomicity."""

from __future__ import annotations

import math
import os
import subprocess
import sys
import textwrap
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path

import pyarrow as pa
import pytest

from agents.sdk import TrajectoryLogger, now_iso
from storage.ingest import ingest_paths
from storage.spool import (
    SCHEMA,
    published_segments,
    read_records,
    read_segment,
    uuid7,
    write_segment,
)
from storage.store import connect


def test_uuid7_strictly_increasing_within_a_process():
    ids = [uuid7() for _ in range(20000)]  # many share a millisecond
    assert all(a < b for a, b in zip(ids, ids[1:], strict=False))
    assert {u.version for u in ids} == {7}
    assert len(set(ids)) == len(ids)


def test_uuid7_forked_processes_never_share_ids(monkeypatch):
    # A clock behind the last id makes every id count up from it: a forked child starts from the
    # same last id as its parent, so both make the same time fields, and only fresh random bits
    # (drawn per id from the OS, never a pool inherited from the parent) keep them apart.
    monkeypatch.setattr(time, "time_ns", lambda: 0)
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: its ids to the pipe, and out without running the parent's exit hooks
        try:
            os.write(write_end, b"".join(uuid7().bytes for _ in range(100)))
        finally:
            os._exit(0)
    os.close(write_end)
    parent = [uuid7() for _ in range(100)]
    with os.fdopen(read_end, "rb") as pipe:
        data = pipe.read()
    os.waitpid(pid, 0)
    child = [uuid.UUID(bytes=data[i:i + 16]) for i in range(0, len(data), 16)]
    assert len(child) == 100
    for ids in (parent, child):
        assert all(a < b for a, b in zip(ids, ids[1:], strict=False))
    assert {u.bytes[:6] for u in parent} == {u.bytes[:6] for u in child}  # the same times...
    assert not set(parent) & set(child)                                    # ...and never the same id


def test_records_follow_the_wire_format(tmp_path):
    log = TrajectoryLogger("solver", 3, spool=tmp_path)
    with log.trajectory({"family": "modular", "task_id": "m/1", "difficulty": 2, "spec": {"p": 7}},
                        tags=["t"], metadata={"seed": 1}) as t:
        t.step(tool_name="add", arguments={"a": 1}, result=2, reward=0.25, observation="1 + 1?")
        t.finish(answer=[2], verified=True, reward=1.0)
    log.close()
    (segment,) = published_segments(tmp_path)
    assert segment.name.endswith(".arrow")
    table = read_segment(segment.read_bytes())
    assert table.schema.equals(SCHEMA)
    # Typed fields are typed columns; free-form values are JSON text.
    assert table.column("type").to_pylist() == ["trajectory", "step", "outcome"]
    assert table.column("index").to_pylist() == [None, 0, None]
    assert table.column("reward").to_pylist() == [None, 0.25, 1.0]
    assert table.column("verified").to_pylist() == [None, None, True]
    assert table.column("arguments").to_pylist() == [None, '{"a":1}', None]
    assert table.column("task_spec").to_pylist() == ['{"p":7}', None, None]
    assert len({str(x) for x in table.column("trajectory_id").to_pylist()}) == 1
    records = read_records(segment)
    assert [r["type"] for r in records] == ["trajectory", "step", "outcome"]
    assert records[0]["agent"]["version"] == "3" and records[0]["tags"] == ["t"]
    assert records[0]["task"] == {"family": "modular", "task_id": "m/1", "split": None, "operation": None,
                                  "difficulty": 2, "spec": {"p": 7}}
    assert records[0]["metadata"] == {"seed": 1} and records[1]["observation"] == "1 + 1?"
    assert records[1]["index"] == 0 and records[1]["reward"] == 0.25 and records[1]["result"] == 2
    assert records[2]["n_steps"] == 1 and records[2]["verified"] is True and records[2]["answer"] == [2]
    assert records[1]["trajectory_id"] == records[0]["trajectory_id"] == t.id


def test_values_of_other_types_nan_rewards_and_given_start_times(tmp_path):
    log = TrajectoryLogger("a", "1", spool=tmp_path)
    with log.trajectory({"family": "f", "task_id": "t"}, start_time="2026-01-02T02:00:00Z") as t:
        t.step(tool_name=7, error=ValueError("boom"), result={1, 2}, reward=float("nan"),
               start_time="2026-01-02T03:04:05.5+01:00")
        t.step(reward=3, start_time=now_iso(), metadata={"k": (1, 2)})
        t.step(start_time=datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC))
        with pytest.raises(ValueError, match="not an ISO 8601 time"):
            t.step(start_time="yesterday")
        with pytest.raises(ValueError, match="before its trajectory's start"):
            t.step(start_time="2026-01-02T01:59:59Z")
    log.close()
    steps = [r for p in published_segments(tmp_path) for r in read_records(p) if r["type"] == "step"]
    assert steps[0]["tool_name"] == "7" and steps[0]["error"] == "boom"  # stored as their str()
    assert steps[0]["result"] == [1, 2] and math.isnan(steps[0]["reward"])  # NaN kept for ingest to see
    assert steps[0]["start_time"] == "2026-01-02T02:04:05.500000Z"
    assert steps[1]["reward"] == 3.0 and steps[1]["metadata"] == {"k": [1, 2]}
    assert steps[2]["start_time"] == "2026-01-02T03:04:05Z"
    assert [s["index"] for s in steps] == [0, 1, 2]  # the refused calls took no index
    (start,) = [r for p in published_segments(tmp_path) for r in read_records(p) if r["type"] == "trajectory"]
    assert start["start_time"] == "2026-01-02T02:00:00Z"
    (outcome,) = [r for p in published_segments(tmp_path) for r in read_records(p) if r["type"] == "outcome"]
    assert outcome["n_steps"] == 3


def test_text_columns_constant_or_not_and_non_ascii(tmp_path):
    # A column with one value throughout (kind and status usually are), one that varies, non-ASCII.
    log = TrajectoryLogger("agënt", "1", spool=tmp_path)
    with log.trajectory({"family": "f", "task_id": "t"}) as t:
        for tool in ("café", "café", "café"):
            t.step(tool_name=tool, kind="tool_call", status="ok")
    with log.trajectory({"family": "f", "task_id": "u"}) as t:
        for tool in ("café", "add", None):
            t.step(tool_name=tool, status="ok")
    log.close()
    (segment,) = published_segments(tmp_path)
    records = read_records(segment)
    steps = [r for r in records if r["type"] == "step"]
    assert [s["tool_name"] for s in steps] == ["café"] * 4 + ["add", None]
    assert {s["kind"] for s in steps} == {"tool_call"} and {s["status"] for s in steps} == {"ok"}
    assert {r["agent"]["name"] for r in records if r["type"] == "trajectory"} == {"agënt"}


def test_flushes_by_size_and_leaves_no_tmp(tmp_path):
    log = TrajectoryLogger("a", "1", spool=tmp_path, flush_bytes=500, flush_seconds=60)
    with log.trajectory({"family": "f", "task_id": "t"}) as t:
        for i in range(20):
            t.step(result="x" * 50, metadata={"i": i})
    assert log.segments_written >= 3
    log.close()
    assert not list(tmp_path.glob("*.tmp"))
    records = [r for p in published_segments(tmp_path) for r in read_records(p)]
    assert len(records) == 22
    assert [r["metadata"]["i"] for r in records if r["type"] == "step"] == list(range(20))


def test_exit_without_close_publishes_the_buffer(tmp_path):
    # The at-exit flush is the first flush here: building the segment must not need anything
    # that cannot start during interpreter shutdown (an import of pandas, which pa.array does, cannot).
    script = textwrap.dedent(f"""
        from agents.sdk import TrajectoryLogger
        log = TrajectoryLogger("a", "1", spool={str(tmp_path)!r}, flush_seconds=60)
        with log.trajectory({{"family": "f", "task_id": "t"}}) as t:
            t.step(result=1)
    """)
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0 and not proc.stderr, proc.stderr
    records = [r for p in published_segments(tmp_path) for r in read_records(p)]
    assert [r["type"] for r in records] == ["trajectory", "step", "outcome"]


OLD_SEGMENT = Path(__file__).parent / "data" / "segment_v3_48d3b1b.arrow"  # by the SDK of commit 48d3b1b


def _log_the_fixture_records(log):
    """What made OLD_SEGMENT (with the SDK of commit 48d3b1b), logged again."""
    with log.trajectory({"family": "modular", "task_id": "modular/add/3/4", "split": "train", "operation": "add",
                         "difficulty": 2, "spec": {"p": 7, "a": 3, "b": 4}}, tags=["fixture", "café"],
                        metadata={"seed": 1}, start_time="2026-01-02T03:04:05+00:00", model="m-large") as t:
        t.step(tool_name="compute", arguments={"op": "add", "x": 3, "y": 4}, result=0, observation="3 + 4 = ?",
               reward=0.5, start_time="2026-01-02T03:04:05.5Z", metadata={"k": [1, 2]})
        turn = t.step(kind="llm", model="m-small", input_tokens=1200, output_tokens=80, cost_usd=0.0031)
        t.step(tool_name="read", arguments={"path": "a.py"}, result="ünïcode", call_id="call_1", turn=turn)
        t.step(tool_name="bad", status="error", error="ValueError: boom")
        t.finish(answer=[0], verified=True, reward=1.0)
    with log.trajectory({"family": "two_hop", "task_id": "q-17"}) as t:
        t.finish(status="error", verified=False, error="gave up")


def test_the_wire_format_is_the_old_sdks(tmp_path):
    # A segment the previous SDK wrote still reads and ingests whole...
    old = read_records(OLD_SEGMENT)
    assert [r["type"] for r in old] == ["trajectory"] * 2 + ["step"] * 4 + ["outcome"] * 2
    con = connect(tmp_path / "store.duckdb")
    report = ingest_paths(con, [OLD_SEGMENT])
    assert (report.trajectories, report.steps, report.quarantined) == (2, 4, 0)
    assert con.execute("SELECT idx, tool_name, model, input_tokens, call_id, turn FROM steps ORDER BY idx"
                       ).fetchall() == [(0, "compute", None, None, None, None), (1, None, "m-small", 1200, None, None),
                                        (2, "read", None, None, "call_1", 1), (3, "bad", None, None, None, None)]
    # ...and this SDK writes the same records: the same columns, types and format version, the
    # same values but for the ids and the times taken from the clock.
    log = TrajectoryLogger("old-sdk", "48d3b1b", spool=tmp_path / "spool", kind="solver", checkpoint="ckpt/1")
    _log_the_fixture_records(log)
    log.close()
    (segment,) = published_segments(tmp_path / "spool")
    new_schema, old_schema = (pa.ipc.open_file(pa.memory_map(str(p))).schema for p in (segment, OLD_SEGMENT))
    assert {f.name: f.type for f in new_schema} == {f.name: f.type for f in old_schema}
    assert new_schema.metadata == old_schema.metadata

    def comparable(records):
        clock = {"trajectory_id", "end_time"}
        out = [{k: v for k, v in r.items() if k not in clock} for r in records]
        for r in out:
            if r["type"] == "step" and r["index"] > 0 or r["type"] == "trajectory" and not r["tags"]:
                r.pop("start_time")
        return out

    new = read_records(segment)
    assert comparable(new) == comparable(old)
    assert [r["trajectory_id"] for r in new if r["type"] == "step"] == [new[0]["trajectory_id"]] * 4


def test_a_start_time_in_now_isos_own_format_is_read_as_given(tmp_path):
    # The old SDK read a 27-character "...Z" time from a per-second cache, which before the
    # process's first now_iso() held no second: the time was stored as 1969.
    log = TrajectoryLogger("a", "1", spool=tmp_path)
    with log.trajectory({"family": "f", "task_id": "t"}, start_time="2026-01-02T03:04:05.000001Z") as t:
        t.step(start_time="2026-01-02T03:04:06.000002Z")
    log.close()
    records = read_records(published_segments(tmp_path)[0])
    assert [r.get("start_time") for r in records] == ["2026-01-02T03:04:05.000001Z",
                                                      "2026-01-02T03:04:06.000002Z", None]


def test_segment_names_sort_in_write_order(tmp_path):
    paths = [write_segment(tmp_path, str(i).encode()) for i in range(50)]
    paths += [write_segment(tmp_path, b"{}\n", suffix=".jsonl")]
    (tmp_path / "dead-writer.arrow.tmp").write_bytes(b"half")
    assert published_segments(tmp_path) == paths


def test_a_segment_that_is_not_arrow_is_refused_by_name(tmp_path):
    from storage.spool import SegmentError

    with pytest.raises(SegmentError, match="x.arrow: not a readable Arrow IPC file"):
        read_segment(b"ARROW1 but cut short", "x.arrow")

    def ipc(table: pa.Table) -> bytes:
        sink = pa.BufferOutputStream()
        with pa.ipc.new_file(sink, table.schema) as writer:
            writer.write_table(table)
        return sink.getvalue().to_pybytes()

    with pytest.raises(SegmentError, match=r"y.arrow: wrong schema: missing columns \['trajectory_id'"):
        read_segment(ipc(pa.table({"type": ["step"]})), "y.arrow")
    ours = pa.table({f.name: pa.array(["step"]) if f.name == "type" else pa.nulls(1, f.type) for f in SCHEMA})
    reordered = read_segment(ipc(ours.select(SCHEMA.names[::-1])))  # another writer's column order
    assert reordered.schema.equals(SCHEMA) and reordered.column("type").to_pylist() == ["step"]
    with pytest.raises(SegmentError, match=r"wrong schema: unknown columns \['extra'\]"):
        read_segment(ipc(ours.append_column("extra", pa.array([1]))))
    with pytest.raises(SegmentError, match="wrong schema: duplicate column names"):
        read_segment(ipc(ours.append_column("type", pa.array(["step"]))))
