"""Issue 14, failure 1: a later record never changes what is stored; a conflicting one goes to
quarantine with a reason naming what it conflicts with. The same rule inside a batch and across
batches, for trajectory starts, steps and outcomes. An identical copy of a stored record changes
nothing and is not quarantined (ingesting anything twice is a no-op)."""

from __future__ import annotations

import orjson
import pytest

from storage.ingest import ingest_paths
from storage.store import connect

TID = "01900000-0000-7000-8000-0000000000c1"
START = {"type": "trajectory", "trajectory_id": TID, "agent": {"name": "a", "version": "1"},
         "task": {"family": "modular", "task_id": "m/1"}, "start_time": "2026-01-01T00:00:00Z"}
STEPS = [{"type": "step", "trajectory_id": TID, "index": i, "result": i} for i in range(5)]
OUTCOME = {"type": "outcome", "trajectory_id": TID, "status": "ok", "verified": True, "reward": 1.0,
           "n_steps": 5, "answer": [4]}
STORED = ("ok", True, 1.0, 5, "[4]")


def jsonl(path, records):
    path.write_bytes(b"".join(orjson.dumps(r) + b"\n" for r in records))
    return path


def stored(con):
    return con.execute("SELECT status, verified, reward, n_steps, answer::VARCHAR FROM trajectories").fetchall()


def reasons(con):
    return [r for (r,) in con.execute("SELECT reason FROM quarantine ORDER BY source, line_no").fetchall()]


@pytest.fixture
def con(tmp_path):
    con = connect(tmp_path / "store.duckdb")
    ingest_paths(con, [jsonl(tmp_path / "first.jsonl", [START, *STEPS, OUTCOME])])
    assert stored(con) == [STORED]
    yield con
    con.close()


def test_a_later_outcome_never_overwrites_a_finished_trajectory(con, tmp_path):
    later = {**OUTCOME, "status": "error", "verified": False, "reward": -5.0, "n_steps": 99}
    report = ingest_paths(con, [jsonl(tmp_path / "later.jsonl", [later])])
    assert report.quarantined == 1
    assert stored(con) == [STORED]
    (reason,) = reasons(con)
    assert reason.startswith(f"outcome for trajectory {TID} conflicts with the stored outcome")
    assert "status ok" in reason and "reward 1.0" in reason


def test_conflicting_steps_and_starts_from_a_later_file_are_quarantined(con, tmp_path):
    later = [{**START, "agent": {"name": "intruder", "version": "9"}},
             {**STEPS[2], "result": "changed"}]
    report = ingest_paths(con, [jsonl(tmp_path / "later.jsonl", later)])
    assert (report.trajectories, report.steps, report.quarantined) == (0, 0, 2)
    assert con.execute("SELECT agent_id FROM trajectories").fetchall() == [("a@1",)]
    assert con.execute("SELECT result FROM steps WHERE idx = 2").fetchall() == [("2",)]
    assert reasons(con) == [
        f"trajectory start {TID} conflicts with the stored trajectory (agent a@1, task m/1)",
        f"step index 2 for trajectory {TID} conflicts with the stored step"]


def test_an_identical_copy_of_stored_records_changes_nothing(con, tmp_path):
    report = ingest_paths(con, [jsonl(tmp_path / "copy.jsonl", [STEPS[1], START, OUTCOME])])
    assert (report.segments, report.trajectories, report.steps, report.quarantined) == (1, 0, 0, 0)
    assert stored(con) == [STORED]
    assert con.execute("SELECT count(*) FROM steps").fetchall() == [(5,)]


def test_the_same_rule_inside_one_batch(tmp_path):
    con = connect(tmp_path / "store.duckdb")
    records = [START, *STEPS, OUTCOME, {**OUTCOME, "reward": -5.0}, {**STEPS[3], "result": "x"},
               {**START, "task": {"family": "modular", "task_id": "m/2"}}, STEPS[4], OUTCOME]
    path = jsonl(tmp_path / "one.jsonl", records)
    report = ingest_paths(con, [path])
    assert (report.trajectories, report.steps, report.quarantined) == (1, 5, 3)
    assert stored(con) == [STORED]
    assert con.execute("SELECT result FROM steps WHERE idx = 3").fetchall() == [("3",)]
    assert reasons(con) == [
        f"duplicate outcome for trajectory {TID} conflicts with the one in {path} line 7",
        f"duplicate step index 3 for trajectory {TID} conflicts with the one in {path} line 5",
        f"duplicate trajectory start {TID} conflicts with the one in {path} line 1"]
