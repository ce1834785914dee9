"""ATIF (Agent Trajectory Interchange Format) in and out.

An ATIF trajectory is `{"schema_version": "ATIF-v1.x", "session_id", "agent": {name, version,
model_name, extra}, "steps": [...], "final_metrics", "notes", "extra"}`; a step is
`{"step_id" (1-based), "timestamp", "source": user|agent|system, "message", "tool_calls":
[{"tool_call_id", "function_name", "arguments"}], "observation": {"results": [{"source_call_id",
"content"}]}, "metrics", "extra"}`.

Field by field, ATIF -> our records (agents/sdk.py wire format):

  trajectory_id   <- trajectory_id or session_id if a UUID, else uuid5(session_id): re-ingest is a no-op
  agent           <- agent.name, agent.version; kind = agent.extra.kind or "external";
                     checkpoint = agent.model_name
  task            <- extra.task (what `export_atif` writes), else family "external",
                     task_id = session_id
  tags, metadata  <- extra.tags, extra.metadata (+ notes, final_metrics)
  step.index      <- step_id - 1
  step.kind       <- extra.kind, else "tool_call" when the step calls a tool, "message" otherwise
  step.tool_name  <- tool_calls[0].function_name     step.arguments <- tool_calls[0].arguments
  step.result     <- observation.results[0].content (all results' contents when several)
  step.observation<- extra.observation, else the message of a user/system step
  step.metadata   <- {source, message, ...}: what has no column of its own, so export restores it
  step.reward, status, error <- step.extra
  outcome         <- extra.outcome {status, answer, verified, reward, error}; without it a
                     trajectory is "ok" with no answer (ATIF files are finished runs)

`export_atif` writes the inverse, one ATIF trajectory per line, built in SQL and written by Python
(the export runs on a read-only sandbox with no file access: `storage.store.reader_config`).
"""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any

import duckdb
import orjson

from storage.ingest import Segment, content_digest
from storage.store import StoreError, one_expression

ATIF_VERSION = "ATIF-v1.4"
_NAMESPACE = uuid.UUID("6f1c1a52-3c1e-4f5e-9a57-2f6b1f7d0c11")  # grokloop's uuid5 namespace


def _trajectory_id(atif: dict) -> str:
    for key in ("trajectory_id", "session_id"):
        value = atif.get(key)
        if isinstance(value, str):
            try:
                return str(uuid.UUID(value))
            except ValueError:
                pass
    session = atif.get("session_id") or atif.get("trajectory_id")
    if not isinstance(session, str) or not session:
        raise ValueError("ATIF trajectory has no session_id")
    return str(uuid.uuid5(_NAMESPACE, session))


def atif_to_records(atif: Any) -> list[dict]:
    """One ATIF trajectory -> our trajectory, step and outcome records. ValueError if it is not
    ATIF (missing agent, steps or session_id)."""
    if not isinstance(atif, dict):
        raise ValueError(f"ATIF trajectory must be a JSON object, got {type(atif).__name__}")
    agent, steps = atif.get("agent"), atif.get("steps")
    if not isinstance(agent, dict) or not agent.get("name"):
        raise ValueError("ATIF trajectory is missing agent.name")
    if not isinstance(steps, list):
        raise ValueError("ATIF trajectory is missing its steps list")
    tid = _trajectory_id(atif)
    extra = atif.get("extra") or {}
    agent_extra = agent.get("extra") or {}
    session = atif.get("session_id") or tid
    task = extra.get("task") or {"family": "external", "task_id": str(session)}
    metadata = extra.get("metadata")
    for key in ("notes", "final_metrics"):
        if atif.get(key) is not None:
            metadata = {**(metadata or {}), f"atif_{key}": atif[key]}
    first_time = extra.get("start_time") or next(
        (s.get("timestamp") for s in steps if isinstance(s, dict)), None)
    records = [{
        "v": 1, "type": "trajectory", "trajectory_id": tid,
        "agent": {"name": agent["name"], "version": str(agent.get("version") or "0"),
                  "kind": agent_extra.get("kind", "external"), "checkpoint": agent.get("model_name")},
        "task": task, "tags": extra.get("tags") or [], "metadata": metadata,
        "start_time": first_time,
    }]
    for position, step in enumerate(steps):
        records.append(_atif_step(tid, position, step))
    outcome = extra.get("outcome") or {}
    if outcome.get("status") == "incomplete":  # exported by grokloop from a run that never finished
        return records
    last_time = next((s.get("timestamp") for s in reversed(steps) if isinstance(s, dict)), None)
    records.append({
        "v": 1, "type": "outcome", "trajectory_id": tid, "status": outcome.get("status", "ok"),
        "answer": outcome.get("answer"), "verified": outcome.get("verified"),
        "reward": outcome.get("reward"), "error": outcome.get("error"), "n_steps": len(steps),
        "end_time": outcome.get("end_time") or last_time,
    })
    return records


def _atif_step(tid: str, position: int, step: Any) -> dict:
    if not isinstance(step, dict):
        raise ValueError(f"ATIF step {position + 1} is not an object")
    calls = step.get("tool_calls") or []
    results = [r.get("content") for r in (step.get("observation") or {}).get("results") or []]
    extra = step.get("extra") or {}
    source = step.get("source", "agent")
    message = step.get("message")
    kind = extra.get("kind") or ("tool_call" if calls else "message")
    observation = extra.get("observation", message if source in ("user", "system") else None)
    meta = dict(extra.get("metadata") or {})
    if source != ("user" if kind == "message" else "agent"):  # the default export writes back
        meta["source"] = source
    if message and source not in ("user", "system"):
        meta["message"] = message
    for key in ("reasoning_content", "model_name", "metrics"):
        if step.get(key) is not None:
            meta[key] = step[key]
    if len(calls) > 1:
        meta["tool_calls"] = calls
    step_id = step.get("step_id", position + 1)
    return {
        "v": 1, "type": "step", "trajectory_id": tid,
        "index": step_id - 1 if isinstance(step_id, int) else step_id,
        "kind": kind,
        "observation": observation,
        "tool_name": calls[0].get("function_name") if calls else None,
        "arguments": calls[0].get("arguments") if calls else None,
        "result": results[0] if len(results) == 1 else (results or None),
        "reward": extra.get("reward"), "status": extra.get("status", "ok"),
        "error": extra.get("error"), "metadata": meta or extra.get("metadata"),
        "start_time": step.get("timestamp"), "end_time": step.get("timestamp"),
    }


def atif_segment(source: str, data: bytes) -> Segment:
    """An ATIF file (one trajectory as JSON, a JSON list, or JSONL) as a segment of our records.
    A trajectory that cannot be mapped is rejected with its raw bytes; identity stays the file's
    bytes."""
    lines: list[bytes] = []
    rejected: list[tuple[int, bytes, str]] = []
    try:
        whole = orjson.loads(data)
        items = [(1, data.strip(), t) for t in (whole if isinstance(whole, list) else [whole])]
    except orjson.JSONDecodeError:  # JSONL: one trajectory per line
        items = []
        for number, raw in enumerate(data.split(b"\n"), start=1):
            if raw.strip():
                try:
                    items.append((number, raw, orjson.loads(raw)))
                except orjson.JSONDecodeError as err:
                    rejected.append((number, raw, f"invalid JSON: {err}"))
    for number, raw, atif in items:
        try:
            lines += [orjson.dumps(r) + b"\n" for r in atif_to_records(atif)]
        except (ValueError, TypeError, AttributeError) as err:
            rejected.append((number, raw, f"not ATIF: {err}"))
    return Segment(source=source, data=b"".join(lines), format="atif", digest=content_digest(data),
                   rejected=rejected)


_EXPORT_SQL = """
SELECT to_json(r)::VARCHAR FROM (
    WITH t AS (SELECT * FROM trajectories {where}),
    s AS (
        SELECT s.trajectory_id, list({{
            'step_id': s.idx + 1,
            'timestamp': strftime(coalesce(s.start_time, s.end_time), '%Y-%m-%dT%H:%M:%S.%fZ'),
            'source': coalesce(s.metadata->>'$.source', CASE WHEN s.kind = 'message' THEN 'user' ELSE 'agent' END),
            'message': coalesce(s.metadata->>'$.message', CASE WHEN s.kind = 'message' THEN s.observation->>'$' END, ''),
            'tool_calls': CASE WHEN s.tool_name IS NOT NULL THEN [{{
                'tool_call_id': 'call_' || s.idx, 'function_name': s.tool_name,
                'arguments': coalesce(s.arguments, '{{}}')::JSON}}] END,
            'observation': CASE WHEN s.result IS NOT NULL THEN {{'results': [{{
                'source_call_id': CASE WHEN s.tool_name IS NOT NULL THEN 'call_' || s.idx END,
                'content': s.result}}]}} END,
            'extra': {{'kind': s.kind, 'observation': s.observation, 'reward': s.reward,
                       'status': s.status, 'error': s.error,
                       'metadata': CASE WHEN s.metadata IS NOT NULL
                           THEN json_merge_patch(s.metadata, '{{"source": null, "message": null}}') END}}
        }} ORDER BY s.idx) AS steps
        FROM steps s SEMI JOIN t USING (trajectory_id)
        GROUP BY s.trajectory_id
    )
    SELECT '{version}' AS schema_version,
           t.trajectory_id::VARCHAR AS session_id,
           {{'name': a.name, 'version': a.version, 'model_name': a.checkpoint,
             'extra': {{'kind': a.kind}}}} AS agent,
           coalesce(s.steps, []) AS steps,
           {{'task': {{'family': k.family, 'task_id': k.task_id, 'split': k.split,
                      'operation': k.operation, 'difficulty': k.difficulty, 'spec': k.spec}},
             'tags': t.tags, 'metadata': t.metadata,
             'start_time': strftime(t.start_time, '%Y-%m-%dT%H:%M:%S.%fZ'),
             'outcome': {{
                 'status': t.status, 'answer': t.answer, 'verified': t.verified,
                 'reward': t.reward, 'error': t.error,
                 'end_time': strftime(t.end_time, '%Y-%m-%dT%H:%M:%S.%fZ')}}}} AS extra
    FROM t
    JOIN agents a USING (agent_id)
    LEFT JOIN tasks k USING (task_id)
    LEFT JOIN s USING (trajectory_id)
    ORDER BY t.trajectory_id
) r
"""


def export_atif(con: duckdb.DuckDBPyConnection, out: Path, where: str | None = None) -> int:
    """Write trajectories (all, or those matching the SQL condition `where` over the trajectories
    table) to `out` as ATIF JSONL, one trajectory per line. Returns how many. `con` may be a
    read-only sandbox (no file access): the lines are built in SQL and written here."""
    clause = f"WHERE {one_expression(where)}" if where else ""
    try:
        lines = con.execute(_EXPORT_SQL.format(where=clause, version=ATIF_VERSION)).fetchall()
    except duckdb.Error as err:
        raise StoreError(f"ATIF export failed (check --where {where!r}): {err}") from err
    Path(out).write_text("".join(f"{line}\n" for (line,) in lines))
    return len(lines)
