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

import pyarrow as pa
import pytest

from agents import spool
from agents.sdk import TrajectoryLogger, now_iso
from agents.spool import (
    SCHEMA,
    published_segments,
    read_records,
    read_segment,
    uuid7,
    write_segment,
)


def test_uuid7_strictly_increasing_within_a_process():
    ids = [uuid7() for _ in range(20000)]  # many share a millisecond
    assert all(a < b for a, b in zip(ids, ids[1:], strict=False))
    assert {u.version for u in ids} == {7}
    assert len(set(ids)) == len(ids)


def test_uuid7_forked_processes_never_share_ids(monkeypatch):
    # A stopped clock puts every id in one millisecond, where ids count up from the last one: a
    # child that kept its parent's last id would make the same ids as the parent.
    monkeypatch.setattr(time, "time_ns", lambda: 1_800_000_000_000_000_000)
    monkeypatch.setattr(spool, "_last_uuid7", spool._last_uuid7)  # later ids: back to the real clock
    parent = [uuid7() for _ in range(3)]
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: its ids to the pipe, and out without running the parent's exit hooks
        try:
            os.write(write_end, b"".join(uuid7().bytes for _ in range(100)))
        finally:
            os._exit(0)
    os.close(write_end)
    parent += [uuid7() for _ in range(100)]
    with os.fdopen(read_end, "rb") as pipe:
        data = pipe.read()
    os.waitpid(pid, 0)
    child = [uuid.UUID(bytes=data[i:i + 16]) for i in range(0, len(data), 16)]
    assert len(child) == 100
    assert all(a < b for a, b in zip(parent, parent[1:], strict=False))
    assert not set(parent) & set(child)
    assert {u.bytes[:6] for u in parent + child} == {(1_800_000_000_000).to_bytes(6, "big")}


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
    # A column with one value throughout is encoded as a repeat (kind and status usually are).
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
    # that cannot start during interpreter shutdown (pandas, which pa.array imports, cannot).
    script = textwrap.dedent(f"""
        import sys
        from agents.sdk import TrajectoryLogger
        log = TrajectoryLogger("a", "1", spool={str(tmp_path)!r}, flush_seconds=60)
        with log.trajectory({{"family": "f", "task_id": "t"}}) as t:
            t.step(result=1)
        assert "pandas" not in sys.modules
    """)
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0 and not proc.stderr, proc.stderr
    records = [r for p in published_segments(tmp_path) for r in read_records(p)]
    assert [r["type"] for r in records] == ["trajectory", "step", "outcome"]


def test_segment_names_sort_in_write_order(tmp_path):
    paths = [write_segment(tmp_path, str(i).encode()) for i in range(50)]
    paths += [write_segment(tmp_path, b"{}\n", suffix=".jsonl")]
    (tmp_path / "dead-writer.arrow.tmp").write_bytes(b"half")
    assert published_segments(tmp_path) == paths


def test_a_segment_that_is_not_arrow_is_refused_by_name(tmp_path):
    from agents.spool import SegmentError

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
