"""Spool -> store: many processes, some killed mid-trajectory; exactly once; outcomes across batches."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import textwrap

import orjson
import pyarrow as pa
import pytest

from agents.sdk import TrajectoryLogger
from storage.ingest import ingest_paths, ingest_spool
from storage.spool import SCHEMA, published_segments, read_records
from storage.store import connect

AGENT = textwrap.dedent("""
    import sys, time
    from agents.sdk import TrajectoryLogger
    spool, worker, die = sys.argv[1], int(sys.argv[2]), sys.argv[3] == "die"
    log = TrajectoryLogger(f"worker{worker}", "1", spool=spool, flush_bytes=600, flush_seconds=60)
    for i in range(4):
        with log.trajectory({"family": "modular", "task_id": f"m/{worker}/{i}"}) as t:
            for k in range(3):
                t.step(tool_name="add", arguments={"k": k}, result=k, reward=0.0)
            t.finish(answer=[i], verified=True, reward=1.0)
    if die:
        t = log.trajectory({"family": "modular", "task_id": f"m/{worker}/dying"})
        t.step(tool_name="add", result=1)
        log.flush()                      # this much is published ...
        t.step(tool_name="add", result=2)  # ... this stays in the buffer and dies with the process
        print("READY", t.id, flush=True)
        time.sleep(60)
    log.close()
""")


def _flushed_steps(paths) -> set[tuple[str, int]]:
    """The oracle: every step record in the published segments, read straight from the files."""
    return {(r["trajectory_id"], r["index"]) for path in paths for r in read_records(path) if r["type"] == "step"}


def test_many_processes_some_killed_exactly_once(tmp_path):
    spool = tmp_path / "spool"
    procs = [subprocess.Popen([sys.executable, "-c", AGENT, str(spool), str(w), "die" if w % 2 else "live"],
                              stdout=subprocess.PIPE, text=True) for w in range(6)]
    dying = []
    for w, proc in enumerate(procs):
        if w % 2:
            line = proc.stdout.readline().split()
            assert line[0] == "READY"
            dying.append(line[1])
            os.kill(proc.pid, signal.SIGKILL)
        assert proc.wait(timeout=60) in (0, -signal.SIGKILL)
    segments = published_segments(spool)
    assert segments and all(p.name.endswith(".arrow") for p in segments)
    assert not [p for p in spool.iterdir() if p.name.endswith(".tmp")]  # killed between flushes
    expected = _flushed_steps(segments)
    assert len(expected) == 6 * 4 * 3 + 3  # the killed ones' unflushed second step is lost

    con = connect(tmp_path / "store.duckdb")
    report = ingest_spool(con, spool)
    stored = {(str(t), i) for t, i in con.execute("SELECT trajectory_id, idx FROM steps").fetchall()}
    assert stored == expected and report.steps == len(expected)
    assert report.segments == len(segments) and report.quarantined == 0
    status = dict(con.execute("SELECT trajectory_id::VARCHAR, status FROM trajectories").fetchall())
    assert len(status) == 6 * 4 + 3
    assert {status[t] for t in dying} == {"incomplete"}
    assert sorted(status.values()).count("ok") == 24
    assert not published_segments(spool)  # moved out of the way

    # Again, and with every segment moved back into the spool: nothing changes.
    assert ingest_spool(con, spool).segments == 0
    for path in (spool / "ingested").iterdir():
        shutil.move(path, spool / path.name)
    again = ingest_spool(con, spool)
    assert (again.segments, again.skipped, again.steps) == (0, len(segments), 0)
    assert con.execute("SELECT count(*) FROM steps").fetchall()[0][0] == len(expected)


def test_outcome_in_a_later_batch_completes_the_trajectory(tmp_path):
    spool, con = tmp_path / "spool", connect(tmp_path / "store.duckdb")
    log = TrajectoryLogger("a", "1", spool=spool)
    t = log.trajectory({"family": "modular", "task_id": "m/1"})
    t.step(result=1)
    log.flush()
    assert ingest_spool(con, spool).trajectories == 1
    assert con.execute("SELECT status FROM trajectories").fetchall() == [("incomplete",)]
    t.step(result=2)
    t.finish(answer=[3], verified=True, reward=1.0)
    log.close()
    report = ingest_spool(con, spool)
    assert (report.trajectories, report.steps, report.quarantined) == (0, 1, 0)
    assert con.execute("SELECT status, verified, reward, n_steps, answer FROM trajectories").fetchall() == [
        ("ok", True, 1.0, 2, "[3]")]


def one_step_spool(tmp_path):
    """A spool holding one SDK-written trajectory of one step, and a fresh store."""
    spool, con = tmp_path / "spool", connect(tmp_path / "store.duckdb")
    log = TrajectoryLogger("a", "1", spool=spool)
    with log.trajectory({"family": "modular", "task_id": "m/1"}) as t:
        t.step(result=1)
    log.close()
    return spool, con


def test_exception_in_block_is_recorded_as_error(tmp_path):
    spool, con = tmp_path / "spool", connect(tmp_path / "store.duckdb")
    log = TrajectoryLogger("a", "1", spool=spool)
    with pytest.raises(ZeroDivisionError), log.trajectory({"family": "modular", "task_id": "m/1"}) as t:
        t.step(result=1)
        1 / 0  # noqa: B018
    log.close()
    ingest_spool(con, spool)
    assert con.execute("SELECT status, verified, error FROM trajectories").fetchall() == [
        ("error", False, "ZeroDivisionError: division by zero")]


def test_same_bytes_under_another_name_are_skipped(tmp_path):
    spool, con = one_step_spool(tmp_path)
    (segment,) = published_segments(spool)
    copy = tmp_path / "copy.arrow"
    shutil.copy(segment, copy)
    assert ingest_spool(con, spool).steps == 1
    report = ingest_paths(con, [copy])
    assert (report.segments, report.skipped) == (0, 1)
    assert con.execute("SELECT count(*) FROM ingest_log").fetchall() == [(1,)]


def test_a_changed_step_in_a_later_batch_is_quarantined_and_the_stored_one_kept(tmp_path):
    con = connect(tmp_path / "store.duckdb")
    tid = "01900000-0000-7000-8000-000000000001"
    start = {"type": "trajectory", "trajectory_id": tid, "agent": {"name": "a", "version": "1"},
             "task": {"family": "f", "task_id": "t"}}
    step = {"type": "step", "trajectory_id": tid, "index": 0, "result": 1}
    first, second = tmp_path / "1.jsonl", tmp_path / "2.jsonl"
    first.write_bytes(orjson.dumps(start) + b"\n" + orjson.dumps(step) + b"\n")
    second.write_bytes(orjson.dumps({**step, "result": 2}) + b"\n")
    ingest_paths(con, [first])
    report = ingest_paths(con, [second])
    assert (report.steps, report.quarantined) == (0, 1)
    assert con.execute("SELECT result FROM steps").fetchall() == [("1",)]
    assert con.execute("SELECT reason FROM quarantine").fetchall() == [
        (f"step index 0 for trajectory {tid} conflicts with the stored step",)]
    assert ingest_paths(con, [tmp_path / "1.jsonl"]).skipped == 1


def test_non_integer_n_steps_and_nan_reward_literals_are_quarantined(tmp_path):
    con = connect(tmp_path / "store.duckdb")
    tid = "01900000-0000-7000-8000-000000000002"
    start = {"type": "trajectory", "trajectory_id": tid, "agent": {"name": "a", "version": "1"},
             "task": {"family": "f", "task_id": "t"}}
    lines = [orjson.dumps(start),
             b'{"type": "step", "trajectory_id": "%s", "index": 0, "reward": NaN}' % tid.encode(),
             b'{"type": "step", "trajectory_id": "%s", "index": 1, "reward": 1e999}' % tid.encode(),
             b'{"type": "outcome", "trajectory_id": "%s", "n_steps": 2.5}' % tid.encode()]
    path = tmp_path / "in.jsonl"
    path.write_bytes(b"\n".join(lines) + b"\n")
    report = ingest_paths(con, [path], format="grokloop")
    assert (report.trajectories, report.steps, report.quarantined) == (1, 0, 3)
    assert con.execute("SELECT line_no, reason FROM quarantine ORDER BY line_no").fetchall() == [
        (2, "NaN or infinite reward: NaN"), (3, "NaN or infinite reward: 1e999"),
        (4, "wrong type: n_steps must be a non-negative integer")]
    assert con.execute("SELECT status FROM trajectories").fetchall() == [("incomplete",)]


def test_a_size_flush_publishes_in_the_background_and_flush_waits(tmp_path):
    spool = tmp_path / "spool"
    log = TrajectoryLogger("a", "1", spool=spool, flush_bytes=300, flush_seconds=60)
    with log.trajectory({"family": "f", "task_id": "t"}) as t:
        for i in range(30):
            t.step(result="x" * 40, metadata={"i": i})
    log.flush()
    assert log.segments_written == len(published_segments(spool)) >= 5
    assert not list(spool.glob("*.tmp"))
    log.close()
    con = connect(tmp_path / "store.duckdb")
    assert ingest_spool(con, spool).steps == 30
    assert con.execute("SELECT list(idx ORDER BY idx) FROM steps").fetchall() == [(list(range(30)),)]


def test_arrow_and_jsonl_segments_in_one_batch(tmp_path):
    from storage.spool import write_segment

    spool, con = one_step_spool(tmp_path)
    tid = "01900000-0000-7000-8000-000000000003"
    records = [{"type": "trajectory", "trajectory_id": tid, "agent": {"name": "other", "version": "2"},
                "task": {"family": "f", "task_id": "t"}},
               {"type": "step", "trajectory_id": tid, "index": 0, "result": {"x": 1}},
               {"type": "outcome", "trajectory_id": tid, "status": "ok", "verified": False}]
    write_segment(spool, b"".join(orjson.dumps(r) + b"\n" for r in records), suffix=".jsonl")
    report = ingest_spool(con, spool)
    assert (report.segments, report.trajectories, report.steps, report.quarantined) == (2, 2, 2, 0)
    assert sorted(con.execute("SELECT format, n_records, n_trajectories, n_steps FROM ingest_log").fetchall()) == [
        ("arrow", 3, 1, 1), ("grokloop", 3, 1, 1)]
    assert sorted(con.execute("SELECT agent_id, status, verified FROM trajectories").fetchall()) == [
        ("a@1", "ok", None), ("other@2", "ok", False)]
    assert con.execute("SELECT result FROM steps ORDER BY result").fetchall() == [("1",), ('{"x":1}',)]


def test_a_damaged_arrow_segment_is_quarantined_whole_and_nothing_is_lost(tmp_path):
    spool, con = tmp_path / "spool", connect(tmp_path / "store.duckdb")
    log = TrajectoryLogger("a", "1", spool=spool)
    for i in range(3):
        with log.trajectory({"family": "modular", "task_id": f"m/{i}"}) as t:
            t.step(result=i)
        log.flush()
    log.close()
    first, second, third = published_segments(spool)
    (tmp_path / "second").write_bytes(second.read_bytes())
    second.write_bytes(second.read_bytes()[:-100])   # truncated: no footer
    third.rename(third.with_name("not-arrow.arrow"))
    (spool / "not-arrow.arrow").write_bytes(b'{"type": "step"}\n')  # JSON under an Arrow name
    wrong = pa.table({f.name: pa.array(["7"]) if f.name == "index" else pa.nulls(1, f.type) for f in SCHEMA})
    sink = pa.BufferOutputStream()
    with pa.ipc.new_file(sink, wrong.schema) as writer:
        writer.write_table(wrong)
    (spool / "wrong-schema.arrow").write_bytes(sink.getvalue().to_pybytes())  # an Arrow file, not ours
    assert ingest_paths(con, [first]).trajectories == 1
    stored = con.execute("SELECT * FROM steps").fetchall()

    report = ingest_spool(con, spool)
    assert (report.segments, report.skipped, report.quarantined, report.steps) == (3, 1, 3, 0)
    rows = con.execute("SELECT source, line_no, raw, reason FROM quarantine ORDER BY source").fetchall()
    assert [(r[0], r[1]) for r in rows] == [(second.name, None), ("not-arrow.arrow", None),
                                            ("wrong-schema.arrow", None)]
    assert rows[0][2] == (tmp_path / "second").read_bytes()[:-100] and rows[1][2] == b'{"type": "step"}\n'
    assert all(r[3].startswith(f"{r[0]}: not a readable Arrow IPC file") for r in rows[:2])
    assert rows[2][3].startswith("wrong-schema.arrow: wrong schema:") and "index" in rows[2][3]
    assert con.execute("SELECT * FROM steps").fetchall() == stored  # the store is as it was
    assert not published_segments(spool)  # handled: their bytes are in the quarantine
    assert ingest_spool(con, spool).segments == 0
    # The whole file again (e.g. recovered from a backup) is a new segment and lands.
    report = ingest_paths(con, [tmp_path / "second"])
    assert (report.trajectories, report.steps, report.quarantined) == (1, 1, 0)
    assert ingest_paths(con, [tmp_path / "second"]).skipped == 1


def test_a_version_1_segment_with_json_as_plain_strings_still_lands(tmp_path):
    """Segment version 1 held free-form values as plain strings; version 2 types them as JSON, which
    DuckDB takes as it is, so ingest alone must still catch text that is not JSON."""
    v1 = pa.schema([pa.field(f.name, pa.string()) if f.type == pa.json_() else f for f in SCHEMA],
                   metadata={"grokloop.format_version": "1"})
    tid = bytes.fromhex("01900000000070008000000000000042")
    rows = [{"type": "trajectory", "trajectory_id": tid, "agent_name": "old", "agent_version": "1",
             "task_family": "f", "task_id": "t", "task_spec": '{"p": 7}'},
            {"type": "step", "trajectory_id": tid, "index": 0, "arguments": '{"a": [1, 2]}'},
            {"type": "step", "trajectory_id": tid, "index": 1, "result": "{not json"},
            {"type": "outcome", "trajectory_id": tid, "status": "ok", "answer": "[3]", "n_steps": 2}]
    table = pa.Table.from_pylist([dict.fromkeys(v1.names) | r for r in rows], schema=v1)
    sink = pa.BufferOutputStream()
    with pa.ipc.new_file(sink, v1) as writer:
        writer.write_table(table)
    (tmp_path / "old.arrow").write_bytes(sink.getvalue().to_pybytes())
    con = connect(tmp_path / "store.duckdb")
    report = ingest_paths(con, [tmp_path / "old.arrow"])
    assert (report.trajectories, report.steps, report.quarantined) == (1, 1, 1)
    assert con.execute("SELECT idx, arguments.a[1] FROM steps").fetchall() == [(0, "2")]
    assert con.execute("SELECT answer, spec.p FROM trajectories JOIN tasks USING (task_id)").fetchall() == [
        ("[3]", "7")]
    assert con.execute("SELECT line_no, reason FROM quarantine").fetchall() == [(3, "invalid JSON in result")]


def test_jsonl_times_with_an_offset_are_stored_as_utc(tmp_path):
    """Times from other writers: an offset is converted, no offset means UTC, whatever the
    session's time zone (a plain cast would keep the wall-clock time and drop the offset)."""
    from storage.spool import write_segment

    tid = "01900000-0000-7000-8000-000000000077"
    times = ["2026-01-01T05:00:00+02:00", "2026-01-01T05:00:00Z", "2026-01-01T05:00:00.5",
             "2026-01-01 05:00:00-0530"]
    records = [{"type": "trajectory", "trajectory_id": tid, "agent": {"name": "other"},
                "task": {"family": "f", "task_id": "t"}, "start_time": times[0]}]
    records += [{"type": "step", "trajectory_id": tid, "index": i, "start_time": t, "end_time": t}
                for i, t in enumerate(times)]
    write_segment(tmp_path / "spool", b"".join(orjson.dumps(r) + b"\n" for r in records), suffix=".jsonl")
    con = connect(tmp_path / "store.duckdb")
    con.execute("SET TimeZone = 'America/New_York'")
    assert ingest_spool(con, tmp_path / "spool").steps == 4
    rows = con.execute("SELECT strftime(start_time, '%H:%M:%S.%f') FROM steps ORDER BY idx").fetchall()
    assert [r[0] for r in rows] == ["03:00:00.000000", "05:00:00.000000", "05:00:00.500000", "10:30:00.000000"]
    assert con.execute("SELECT strftime(start_time, '%H:%M') FROM trajectories").fetchall() == [("03:00",)]


def test_the_same_records_as_arrow_and_as_jsonl_in_one_batch_land_once(tmp_path):
    # A trajectory's records twice in one batch, in different bytes (an Arrow segment and the same
    # records as JSON lines): the first copy lands; the second, identical, changes nothing and is
    # not quarantined (as across batches); nothing is stored twice.
    from storage.spool import write_segment

    spool = tmp_path / "spool"
    log = TrajectoryLogger("a", "1", spool=spool)
    with log.trajectory({"family": "modular", "task_id": "m/1"}) as t:
        for k in range(3):
            t.step(tool_name="add", arguments={"k": k}, result=k)
        t.finish(answer=[3], verified=True)
    log.close()
    (segment,) = published_segments(spool)
    write_segment(spool, b"".join(orjson.dumps(r) + b"\n" for r in read_records(segment)), suffix=".jsonl")
    con = connect(tmp_path / "store.duckdb")
    report = ingest_spool(con, spool)

    assert (report.segments, report.trajectories, report.steps, report.quarantined) == (2, 1, 3, 0)
    assert con.execute("SELECT count(*), any_value(status), any_value(verified) FROM trajectories"
                       ).fetchall() == [(1, "ok", True)]
    assert con.execute("SELECT idx, result FROM steps ORDER BY idx").fetchall() == [(0, "0"), (1, "1"), (2, "2")]
    assert con.execute("SELECT count(*) FROM quarantine").fetchall() == [(0,)]
