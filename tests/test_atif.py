"""ATIF in and out: a file from another framework maps field by field; export -> ingest round-trips."""

from __future__ import annotations

import orjson

from agents.sdk import TrajectoryLogger
from storage.atif import export_atif
from storage.export import export_jsonl
from storage.ingest import detect_format, ingest_paths, ingest_spool
from storage.store import connect

EXTERNAL = {
    "schema_version": "ATIF-v1.4",
    "session_id": "run-42",
    "agent": {"name": "terminus", "version": "2.0", "model_name": "some-llm"},
    "steps": [
        {"step_id": 1, "timestamp": "2025-01-01T00:00:00Z", "source": "user", "message": "add 2 and 3"},
        {"step_id": 2, "timestamp": "2025-01-01T00:00:01Z", "source": "agent", "message": "calling add",
         "tool_calls": [{"tool_call_id": "c1", "function_name": "add", "arguments": {"a": 2, "b": 3}}],
         "observation": {"results": [{"source_call_id": "c1", "content": "5"}]}},
        {"step_id": 3, "timestamp": "2025-01-01T00:00:02Z", "source": "agent", "message": "5"},
    ],
    "final_metrics": {"total_steps": 3},
}


def test_external_atif_maps_field_by_field(tmp_path):
    path = tmp_path / "run.json"
    path.write_bytes(orjson.dumps(EXTERNAL, option=orjson.OPT_INDENT_2))  # pretty-printed, as tools write it
    assert detect_format(path.read_bytes()) == "atif"
    con = connect(tmp_path / "store.duckdb")
    report = ingest_paths(con, [path])
    assert (report.trajectories, report.steps, report.quarantined) == (1, 3, 0)
    assert con.execute("SELECT agent_id, kind, checkpoint FROM agents").fetchall() == [
        ("terminus@2.0", "external", None)]
    assert con.execute("SELECT family, task_id, status, n_steps, model FROM trajectories").fetchall() == [
        ("external", "run-42", "ok", 3, "some-llm")]
    steps = con.execute("SELECT idx, kind, observation, tool_name, arguments, result, metadata->>'message' "
                        "FROM steps ORDER BY idx").fetchall()
    assert steps == [
        (0, "message", '"add 2 and 3"', None, None, None, None),
        (1, "tool_call", None, "add", '{"a":2,"b":3}', '"5"', "calling add"),
        (2, "message", None, None, None, None, "5"),
    ]
    assert ingest_paths(con, [path]).skipped == 1  # same file again: nothing


def test_bad_atif_is_quarantined_with_its_bytes(tmp_path):
    good = orjson.dumps(EXTERNAL)
    bad = orjson.dumps({"schema_version": "ATIF-v1.4", "session_id": "x", "steps": []})  # no agent
    path = tmp_path / "runs.jsonl"
    path.write_bytes(good + b"\n" + bad + b"\n")
    con = connect(tmp_path / "store.duckdb")
    report = ingest_paths(con, [path], format="atif")
    assert (report.trajectories, report.quarantined) == (1, 1)
    assert con.execute("SELECT line_no, raw, reason FROM quarantine").fetchall() == [
        (2, bad, "not ATIF: ATIF trajectory is missing agent.name")]


def test_export_then_ingest_round_trips(tmp_path):
    spool = tmp_path / "spool"
    log = TrajectoryLogger("solver", "1", spool=spool, kind="solver")
    for i in range(3):
        with log.trajectory({"family": "modular", "task_id": f"m/{i}", "split": "train", "operation": "add",
                             "difficulty": 2, "spec": {"p": 7}}, tags=["x"], metadata={"i": i}) as t:
            t.step(tool_name="add", arguments={"a": i, "s": 'q"\n'}, result=[i], observation="look",
                   reward=0.5, metadata={"k": 1})
            t.step(kind="answer", result=[i])
            t.finish(answer=[i], verified=i != 1, reward=1.0)
    log.trajectory({"family": "modular", "task_id": "m/open"}).step(result=0)  # stays incomplete
    log.close()
    con = connect(tmp_path / "store.duckdb")
    ingest_spool(con, spool)
    tables = {"trajectories": "SELECT * EXCLUDE (source, ingested_at) FROM trajectories ORDER BY 1",
              "steps": "SELECT * FROM steps ORDER BY 1, 2",
              "tasks": "SELECT * EXCLUDE (first_seen) FROM tasks ORDER BY 1",
              "agents": "SELECT * EXCLUDE (first_seen) FROM agents"}
    before = {k: con.execute(q).fetchall() for k, q in tables.items()}
    for name, export in (("atif", export_atif), ("jsonl", export_jsonl)):
        out = tmp_path / f"out.{name}.jsonl"
        assert export(con, out) == 4
        other = connect(tmp_path / f"{name}.duckdb")
        assert ingest_paths(other, [out]).quarantined == 0
        after = {k: other.execute(q).fetchall() for k, q in tables.items()}
        assert after == before, name
    assert export_atif(con, tmp_path / "some.jsonl", where="family = 'modular' AND verified") == 2
    assert len((tmp_path / "some.jsonl").read_bytes().splitlines()) == 2


# A coding agent's run as Harbor writes it (ATIF v1.6): system and user messages (content parts),
# one agent turn with reasoning and three parallel tool calls, their results, per-step metrics
# and cost, and the run's final metrics, notes and extra.
CODING_AGENT = {
    "schema_version": "ATIF-v1.6",
    "session_id": "sess-7f3a",
    "agent": {"name": "claude-code", "version": "1.0.98", "model_name": "claude-sonnet-4",
              "tool_definitions": [{"type": "function", "function": {"name": "read_file", "parameters": {}}}],
              "extra": {"harness": "harbor"}},
    "steps": [
        {"step_id": 1, "timestamp": "2026-03-01T10:00:00Z", "source": "system",
         "message": "You are a coding agent working in /repo."},
        {"step_id": 2, "timestamp": "2026-03-01T10:00:01Z", "source": "user",
         "message": [{"type": "text", "text": "Fix the failing test in utils.py"},
                     {"type": "image", "source": {"media_type": "image/png", "path": "images/fail.png"}}]},
        {"step_id": 3, "timestamp": "2026-03-01T10:00:04.250Z", "source": "agent", "model_name": "claude-sonnet-4",
         "message": "I'll look at the test, the module and the CI log at once.",
         "reasoning_content": "The failure is probably an off-by-one in utils.clamp.",
         "tool_calls": [
             {"tool_call_id": "toolu_01A", "function_name": "read_file", "arguments": {"path": "tests/test_utils.py"}},
             {"tool_call_id": "toolu_01B", "function_name": "read_file", "arguments": {"path": "utils.py"}},
             {"tool_call_id": "toolu_01C", "function_name": "bash", "arguments": {"command": "pytest -x -q"}}],
         "observation": {"results": [
             {"source_call_id": "toolu_01A", "content": "def test_clamp(): assert clamp(5, 0, 4) == 4"},
             {"source_call_id": "toolu_01B", "content": "def clamp(x, lo, hi): return min(x, hi + 1)"},
             {"source_call_id": "toolu_01C", "content": [{"type": "text", "text": "1 failed in 0.12s"}]}]},
         "metrics": {"prompt_tokens": 5120, "completion_tokens": 312, "cached_tokens": 4096, "cost_usd": 0.02004,
                     "extra": {"stop_reason": "tool_use"}}},
        {"step_id": 4, "timestamp": "2026-03-01T10:00:07Z", "source": "agent", "model_name": "claude-sonnet-4",
         "message": "Fixed: clamp returned hi + 1.",
         "metrics": {"prompt_tokens": 5600, "completion_tokens": 40, "cost_usd": 0.0174}},
    ],
    "notes": "trial 3 of 5",
    "final_metrics": {"total_prompt_tokens": 10720, "total_completion_tokens": 352, "total_cached_tokens": 4096,
                      "total_cost_usd": 0.03744, "total_steps": 4, "extra": {"wall_seconds": 7.0}},
    "extra": {"harbor_trial": "fix-clamp__3"},
}


def _round_trip(tmp_path, atif, name="run"):
    path = tmp_path / f"{name}.json"
    path.write_bytes(orjson.dumps(atif, option=orjson.OPT_INDENT_2))
    con = connect(tmp_path / f"{name}.duckdb")
    report = ingest_paths(con, [path], format="atif")
    out = tmp_path / f"{name}.out.jsonl"
    assert export_atif(con, out) == 1
    return con, report, orjson.loads(out.read_bytes())


def _canonical(value):
    return orjson.dumps(value, option=orjson.OPT_SORT_KEYS)


def test_a_coding_agent_trajectory_round_trips_with_every_call_result_and_metric(tmp_path):
    con, report, back = _round_trip(tmp_path, CODING_AGENT)
    assert report.quarantined == 0 and report.trajectories == 1
    assert _canonical(back) == _canonical(CODING_AGENT)  # the same JSON, every field
    # ... and what a researcher queries is in columns: three calls of one turn, their ids and results.
    calls = con.execute("SELECT idx, turn, tool_name, call_id, arguments->>'path', result->>'$' FROM steps "
                        "WHERE tool_name IS NOT NULL ORDER BY idx").fetchall()
    assert calls == [
        (2, None, "read_file", "toolu_01A", "tests/test_utils.py", "def test_clamp(): assert clamp(5, 0, 4) == 4"),
        (3, 2, "read_file", "toolu_01B", "utils.py", "def clamp(x, lo, hi): return min(x, hi + 1)"),
        (4, 2, "bash", "toolu_01C", None, '[{"type":"text","text":"1 failed in 0.12s"}]')]
    usage = con.execute("SELECT idx, model, input_tokens, output_tokens, cost_usd FROM steps "
                        "WHERE input_tokens IS NOT NULL ORDER BY idx").fetchall()
    assert usage == [(2, "claude-sonnet-4", 5120, 312, 0.02004), (5, "claude-sonnet-4", 5600, 40, 0.0174)]
    assert con.execute("SELECT model, n_steps FROM trajectories").fetchall() == [("claude-sonnet-4", 6)]
    assert con.execute("SELECT metadata->>'reasoning_content' FROM steps WHERE idx = 2").fetchall() == [
        ("The failure is probably an off-by-one in utils.clamp.",)]
    assert con.execute("SELECT tool_calls, input_tokens, output_tokens, cost_usd FROM usage").fetchall() == [
        (3, 10720, 352, 0.03744)]


def test_every_atif_version_round_trips(tmp_path):
    for version in ("ATIF-v1.2", "ATIF-v1.3", "ATIF-v1.4", "ATIF-v1.5", "ATIF-v1.6", "ATIF-v1.7"):
        atif = {**EXTERNAL, "schema_version": version, "session_id": f"run-{version}"}
        _, report, back = _round_trip(tmp_path, atif, name=version)
        assert report.quarantined == 0 and _canonical(back) == _canonical(atif), version


def test_sdk_parallel_tool_calls_round_trip_through_atif(tmp_path):
    spool = tmp_path / "spool"
    log = TrajectoryLogger("coder", "1", spool=spool)
    with log.trajectory({"family": "external", "task_id": "fix"}, model="m1") as t:
        turn = t.step(kind="llm", model="m1", input_tokens=100, output_tokens=7, cost_usd=0.001,
                      metadata={"temperature": 0})
        t.step(tool_name="read", arguments={"p": "a"}, result="A", call_id="c1", turn=turn)
        t.step(tool_name="read", arguments={"p": "b"}, result="B", call_id="c2", turn=turn, status="error",
               error="denied")
        t.step(kind="answer", observation="done")
        t.finish(answer="ok", verified=True)
    log.close()
    con = connect(tmp_path / "a.duckdb")
    ingest_spool(con, spool)
    export_atif(con, tmp_path / "out.jsonl")
    (atif,) = [orjson.loads(line) for line in (tmp_path / "out.jsonl").read_bytes().splitlines()]
    assert [len(s.get("tool_calls", [])) for s in atif["steps"]] == [2, 0]  # one turn, two calls
    other = connect(tmp_path / "b.duckdb")
    assert ingest_paths(other, [tmp_path / "out.jsonl"]).quarantined == 0
    query = "SELECT * FROM steps ORDER BY idx"
    assert other.execute(query).fetchall() == con.execute(query).fetchall()
    query = "SELECT * EXCLUDE (source, ingested_at) FROM trajectories"
    assert other.execute(query).fetchall() == con.execute(query).fetchall()
