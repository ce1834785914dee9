"""ATIF (Agent Trajectory Interchange Format, Harbor / Terminal-Bench) in and out, without loss.

An ATIF trajectory (v1.2 to v1.7) is `{"schema_version", "session_id", "agent": {name, version,
model_name, tool_definitions, extra}, "steps": [...], "notes", "final_metrics", "extra"}`; a
step is `{"step_id", "timestamp", "source": system|user|agent, "message" (text or content
parts), "model_name", "reasoning_content", "tool_calls": [{tool_call_id, function_name,
arguments}], "observation": {"results": [{source_call_id, content}]}, "metrics":
{prompt_tokens, completion_tokens, cached_tokens, cost_usd, ...}, "extra"}`.

How a trajectory maps to the store (the columns a researcher queries):

  trajectory_id   <- session_id if a UUID, else uuid5(session_id): re-ingest is a no-op
  agent           <- agent.name, agent.version; kind = agent.extra.kind or "external";
                     checkpoint = agent.extra.checkpoint; trajectories.model <- agent.model_name
  task            <- extra.task (what `export_atif` writes), else family "external", task_id = session_id
  tags, metadata  <- extra.tags, extra.metadata
  outcome         <- extra.outcome, else "ok" with no answer (ATIF files are finished runs)
  steps           <- one row per tool call (parallel calls are rows of one turn: `turn` is the ATIF
                     step's first row); a step without calls is one row. tool_calls[i] ->
                     tool_name, call_id, arguments; its result (by source_call_id) -> result;
                     metrics.prompt_tokens / completion_tokens / cost_usd, model_name ->
                     input_tokens, output_tokens, cost_usd, model (on the turn's first row);
                     timestamp -> start_time; a user/system message -> observation, an agent's
                     message, reasoning_content and a non-default source -> metadata;
                     extra.kind / status / error / reward / metadata -> those columns.

Without loss: `build_atif` makes an ATIF trajectory from stored rows, and `export_atif` writes
that. At ingest the same function is run on the rows about to be stored, and whatever it would
not give back (a notes string, final_metrics, cached tokens, logprobs, tool_definitions, an
`extra`, a timestamp's own spelling...) is kept as a patch (`atif_patch` in the trajectory's and
in the turn's first step's metadata) that export applies. So ingest -> export gives back the
file's JSON exactly (keys and values; not its whitespace or key order), and a trajectory
grokloop exported itself carries no patch. Export reads rows in SQL and writes the lines from
Python (the export runs on a read-only sandbox with no file access: `storage.store.reader_config`).
"""

from __future__ import annotations

import math
import uuid
from collections.abc import Iterable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import duckdb
import orjson

from storage.ingest import Segment, content_digest
from storage.spool import utc_micros
from storage.store import StoreError, one_expression

ATIF_VERSION = "ATIF-v1.6"
PATCH_KEY = "atif_patch"  # in metadata: what export applies to get the ingested file back
_NAMESPACE = uuid.UUID("6f1c1a52-3c1e-4f5e-9a57-2f6b1f7d0c11")  # grokloop's uuid5 namespace
_STEP_KEYS = ("source", "message", "reasoning_content")  # step metadata keys that are ATIF fields
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_INT64 = 1 << 63


# Patches: what turns the ATIF that `build_atif` makes back into the one that was ingested.
# {"=": value} replaces; {"keys": {key: patch}, "del": [keys]} edits an object;
# {"items": {index: patch}} edits a list of the same length.

def _same(a: Any, b: Any) -> bool:
    """Equal as JSON, strictly: 1 is not 1.0 nor true."""
    return a.__class__ is b.__class__ and orjson.dumps(a, option=orjson.OPT_SORT_KEYS) == orjson.dumps(
        b, option=orjson.OPT_SORT_KEYS)


def make_patch(original: Any, built: Any) -> dict | None:
    if _same(original, built):
        return None
    if isinstance(original, dict) and isinstance(built, dict):
        keys = {}
        for key, value in original.items():
            if key not in built:
                keys[key] = {"=": value}
            elif (sub := make_patch(value, built[key])) is not None:
                keys[key] = sub
        dropped = [key for key in built if key not in original]
        return {**({"keys": keys} if keys else {}), **({"del": dropped} if dropped else {})}
    if isinstance(original, list) and isinstance(built, list) and len(original) == len(built):
        items = {str(i): p for i, (o, b) in enumerate(zip(original, built, strict=True))
                 if (p := make_patch(o, b)) is not None}
        return {"items": items}
    return {"=": original}


def apply_patch(built: Any, patch: dict | None) -> Any:
    if patch is None:
        return built
    if "=" in patch:
        return patch["="]
    if "items" in patch:
        return [apply_patch(v, patch["items"].get(str(i))) for i, v in enumerate(built)]
    out = {k: v for k, v in built.items() if k not in patch.get("del", ())}
    for key, sub in patch.get("keys", {}).items():
        out[key] = apply_patch(built.get(key), sub)
    return out


# Values as the store gives them back.

def _time(value: Any) -> str | None:
    """An ISO 8601 time as the store gives it back (UTC, microseconds, "Z"); None if not one."""
    if not isinstance(value, str):
        return None
    try:
        micros = utc_micros(value)
    except (ValueError, TypeError, OverflowError):
        return None
    return _format_time(_EPOCH + timedelta(microseconds=micros))


def _format_time(value: datetime | None) -> str | None:
    return None if value is None else value.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _str(value: Any) -> str | None:
    return value if isinstance(value, str) else None


def _count(value: Any) -> int | None:
    return value if value.__class__ is int and 0 <= value < _INT64 else None


def _number(value: Any) -> float | None:
    if value.__class__ in (int, float) and math.isfinite(value) and abs(value) < 1e300:
        return float(value)
    return None


def _dict(value: Any) -> dict:
    return value if isinstance(value, dict) else {}


# Stored rows -> ATIF.

def _call_id(row: dict) -> str:
    return row["call_id"] if row["call_id"] is not None else f"call_{row['idx']}"


def _split_metadata(metadata: Any, internal: tuple[str, ...]) -> tuple[Any, dict, dict | None]:
    """(the user's metadata, the ATIF fields kept in it, the patch)."""
    if not isinstance(metadata, dict):
        return metadata, {}, None
    rest = {k: v for k, v in metadata.items() if k not in internal and k != PATCH_KEY}
    if not rest and len(rest) < len(metadata):  # it held only ATIF fields: the user's was none
        rest = None
    return rest, {k: metadata[k] for k in internal if k in metadata}, metadata.get(PATCH_KEY)


def _build_step(step_id: int, rows: list[dict]) -> dict:
    first = rows[0]
    metadata, fields, patch = _split_metadata(first["metadata"], _STEP_KEYS)
    source = fields["source"] if isinstance(fields.get("source"), str) else (
        "user" if first["kind"] == "message" else "agent")
    if "message" in fields:
        message = fields["message"]
    elif source in ("user", "system") and first["observation"] is not None:
        message = first["observation"]
    else:
        message = ""
    step: dict[str, Any] = {"step_id": step_id}
    if first["start_time"] is not None:
        step["timestamp"] = first["start_time"]
    step["source"] = source
    step["message"] = message
    if first["model"] is not None:
        step["model_name"] = first["model"]
    if "reasoning_content" in fields:
        step["reasoning_content"] = fields["reasoning_content"]
    calls = [r for r in rows if r["tool_name"] is not None]
    if calls:
        step["tool_calls"] = [{"tool_call_id": _call_id(r), "function_name": r["tool_name"],
                               "arguments": r["arguments"] if r["arguments"] is not None else {}}
                              for r in calls]
    results = [r for r in rows if r["result"] is not None]
    if results:
        step["observation"] = {"results": [
            {"source_call_id": _call_id(r), "content": r["result"]} if r["tool_name"] is not None
            else {"content": r["result"]} for r in results]}
    metrics = {k: first[c] for k, c in (("prompt_tokens", "input_tokens"), ("completion_tokens", "output_tokens"),
                                        ("cost_usd", "cost_usd")) if first[c] is not None}
    if metrics:
        step["metrics"] = metrics
    extra = {"kind": first["kind"], "observation": first["observation"], "reward": first["reward"],
             "status": first["status"], "error": first["error"], "metadata": metadata}
    if first["end_time"] != first["start_time"]:
        extra["end_time"] = first["end_time"]
    if len(rows) > 1:  # how the turn's rows map to its calls and results, and the later rows' fields
        extra["rows"] = [_row_extra(r, calls, results, later=i > 0) for i, r in enumerate(rows)]
    step["extra"] = extra
    return apply_patch(step, patch)


def _row_extra(row: dict, calls: list[dict], results: list[dict], *, later: bool) -> dict:
    out = {"call": next((i for i, c in enumerate(calls) if c is row), None),
           "result": next((i for i, r in enumerate(results) if r is row), None)}
    if later:
        out |= {k: row[k] for k in ("kind", "observation", "reward", "status", "error", "metadata",
                                    "start_time", "end_time", "model", "input_tokens", "output_tokens",
                                    "cost_usd")}
    return out


def _turns(rows: list[dict]) -> list[list[dict]]:
    """Rows (in idx order) grouped into agent turns: a row's turn, else a turn of its own."""
    groups: dict[int, list[dict]] = {}
    for row in rows:
        groups.setdefault(row["turn"] if row["turn"] is not None else row["idx"], []).append(row)
    return list(groups.values())


def build_atif(trajectory: dict, rows: list[dict]) -> dict:
    """One trajectory as ATIF, from its row and its step rows (dicts of the store's columns, JSON
    values parsed, times as `_format_time` strings, steps in idx order), its patch applied."""
    t = trajectory
    metadata, _, patch = _split_metadata(t["metadata"], ())
    agent = {"name": t["agent_name"], "version": t["agent_version"]}
    if t["model"] is not None:
        agent["model_name"] = t["model"]
    agent["extra"] = {"kind": t["agent_kind"], **({"checkpoint": t["checkpoint"]} if t["checkpoint"] else {})}
    atif = {
        "schema_version": ATIF_VERSION,
        "session_id": t["trajectory_id"],
        "agent": agent,
        "steps": [_build_step(n, turn) for n, turn in enumerate(_turns(rows), start=1)],
        "extra": {
            "task": {k: t[k] for k in ("family", "task_id", "split", "operation", "difficulty", "spec")},
            "tags": t["tags"], "metadata": metadata, "start_time": t["start_time"],
            "outcome": {k: t[k] for k in ("status", "answer", "verified", "reward", "error", "end_time")},
        },
    }
    return apply_patch(atif, patch)


# ATIF -> records (agents/sdk.py wire format) and the rows they become.

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


def _task(extra: dict, session: str) -> dict:
    task = extra.get("task")
    difficulty = task.get("difficulty") if isinstance(task, dict) else None
    ok = (isinstance(task, dict) and isinstance(task.get("family"), str) and task["family"]
          and isinstance(task.get("task_id"), str) and task["task_id"]
          and all(task.get(k) is None or isinstance(task[k], str) for k in ("split", "operation"))
          and (difficulty is None or (difficulty.__class__ is int and -(1 << 31) <= difficulty < 1 << 31)))
    task = task if ok else {"family": "external", "task_id": session}
    return {k: task.get(k) for k in ("family", "task_id", "split", "operation", "difficulty", "spec")}


def _with_patch(original: dict, metadata: Any, build) -> Any:
    """`metadata` with the patch that turns `build(metadata)` into `original`, if one is needed.
    The patch lives in the metadata it is computed from, so when the metadata is not an object
    it becomes one (and the patch restores what it was)."""
    if make_patch(original, build(metadata)) is None:
        return metadata
    # The patch is made against what export will build from the metadata that holds it: the
    # same keys, the patch's own not applied yet (and never shown: build() leaves it out).
    base = dict(metadata) if isinstance(metadata, dict) else {}
    base[PATCH_KEY] = None
    base[PATCH_KEY] = make_patch(original, build(base))
    return base


def _step_rows(tid: str, position: int, step: Any, first_idx: int) -> list[dict]:
    """An ATIF step as step rows (the store's columns; JSON values as Python values)."""
    if not isinstance(step, dict):
        raise ValueError(f"ATIF step {position + 1} is not an object")
    extra = _dict(step.get("extra"))
    calls = step.get("tool_calls")
    calls = calls if isinstance(calls, list) and calls and all(
        isinstance(c, dict) and isinstance(c.get("function_name"), str) for c in calls) else []
    results = _dict(step.get("observation")).get("results")
    results = [r for r in results if isinstance(r, dict)] if isinstance(results, list) else []
    source = step.get("source") if isinstance(step.get("source"), str) else "agent"
    kind = _str(extra.get("kind")) or ("tool_call" if calls else "message")
    message = step.get("message")
    observation = extra.get("observation", message if source in ("user", "system") else None)
    fields = {}
    if source != ("user" if kind == "message" else "agent"):
        fields["source"] = source
    predicted = observation if source in ("user", "system") and observation is not None else ""
    if "message" in step and not _same(message, predicted):
        fields["message"] = message
    if step.get("reasoning_content") is not None:
        fields["reasoning_content"] = step["reasoning_content"]
    user_metadata = extra.get("metadata")
    merged = {**_dict(user_metadata), **fields}
    metadata = merged if merged or isinstance(user_metadata, dict) else user_metadata
    start = _time(step.get("timestamp"))
    end = _time(extra["end_time"]) if "end_time" in extra else start
    metrics = _dict(step.get("metrics"))
    first = {"idx": first_idx, "turn": first_idx, "kind": kind, "observation": observation,
             "tool_name": None, "arguments": None, "result": None, "call_id": None,
             "reward": _number(extra.get("reward")), "status": _str(extra.get("status")) or "ok",
             "error": _str(extra.get("error")), "metadata": metadata, "start_time": start, "end_time": end,
             "model": _str(step.get("model_name")), "input_tokens": _count(metrics.get("prompt_tokens")),
             "output_tokens": _count(metrics.get("completion_tokens")), "cost_usd": _number(metrics.get("cost_usd"))}
    layout = extra.get("rows")
    if isinstance(layout, list) and len(layout) > 1 and all(isinstance(r, dict) for r in layout):
        rows = [dict(first)] + [_later_row(first, r) for r in layout[1:]]  # grokloop's own export
        for row, link in zip(rows, layout, strict=True):
            _link(row, link.get("call"), link.get("result"), calls, results)
    else:  # one row per call (the turn's usage on the first), or one row
        rows = [dict(first)] + [{**first, "kind": "tool_call", "observation": None, "reward": None, "status": "ok",
                                 "error": None, "metadata": None, "model": None, "input_tokens": None,
                                 "output_tokens": None, "cost_usd": None} for _ in calls[1:]]
        used: set[int] = set()
        for i, (row, call) in enumerate(zip(rows, calls, strict=False)):
            match = next((j for j, r in enumerate(results) if j not in used
                          and r.get("source_call_id") == call.get("tool_call_id")), None)
            if match is not None:
                used.add(match)
            _link(row, i, match, calls, results)
        if not calls and len(results) == 1:
            rows[0]["result"] = results[0].get("content")
    for n, row in enumerate(rows):  # the turn's first row is the turn; the rows after it name it
        row["idx"] = first_idx + n
        row["turn"] = first_idx if n else None
        if row["call_id"] == f"call_{row['idx']}":  # the id export makes up for a call that had none
            row["call_id"] = None
    original = {k: v for k, v in step.items()}
    rows[0]["metadata"] = _with_patch(original, rows[0]["metadata"],
                                      lambda m: _build_step(position + 1, [{**rows[0], "metadata": m}, *rows[1:]]))
    return rows


def _later_row(first: dict, link: dict) -> dict:
    row = {**first, "kind": _str(link.get("kind")) or "tool_call", "observation": link.get("observation"),
           "reward": _number(link.get("reward")), "status": _str(link.get("status")) or "ok",
           "error": _str(link.get("error")), "metadata": link.get("metadata"),
           "start_time": _time(link.get("start_time")), "end_time": _time(link.get("end_time")),
           "model": _str(link.get("model")), "input_tokens": _count(link.get("input_tokens")),
           "output_tokens": _count(link.get("output_tokens")), "cost_usd": _number(link.get("cost_usd"))}
    return row


def _link(row: dict, call: Any, result: Any, calls: list[dict], results: list[dict]) -> None:
    if call.__class__ is int and 0 <= call < len(calls):
        c = calls[call]
        row["tool_name"] = c["function_name"]
        row["call_id"] = _str(c.get("tool_call_id"))
        row["arguments"] = c.get("arguments")
    if result.__class__ is int and 0 <= result < len(results):
        row["result"] = results[result].get("content")


def atif_to_records(atif: Any) -> list[dict]:
    """One ATIF trajectory -> our trajectory, step and outcome records (agents/sdk.py). ValueError
    if it is not ATIF (missing agent.name, steps or session_id)."""
    if not isinstance(atif, dict):
        raise ValueError(f"ATIF trajectory must be a JSON object, got {type(atif).__name__}")
    agent, steps = atif.get("agent"), atif.get("steps")
    if not isinstance(agent, dict) or not isinstance(agent.get("name"), str) or not agent["name"]:
        raise ValueError("ATIF trajectory is missing agent.name")
    if not isinstance(steps, list):
        raise ValueError("ATIF trajectory is missing its steps list")
    tid = _trajectory_id(atif)
    session = atif.get("session_id") if isinstance(atif.get("session_id"), str) else tid
    extra, agent_extra = _dict(atif.get("extra")), _dict(agent.get("extra"))
    outcome = _dict(extra.get("outcome"))
    rows: list[dict] = []
    for position, step in enumerate(steps):
        rows += _step_rows(tid, position, step, len(rows))
    tags = extra.get("tags")
    first_time = next((r["start_time"] for r in rows if r["start_time"]), None)
    last_time = next((r["start_time"] for r in reversed(rows) if r["start_time"]), None)
    incomplete = outcome.get("status") == "incomplete"  # exported by grokloop from a run that never finished
    t = {"trajectory_id": tid, "agent_name": agent["name"], "agent_version": str(agent.get("version") or "0"),
         "agent_kind": _str(agent_extra.get("kind", "external")),
         "checkpoint": _str(agent_extra.get("checkpoint")), "model": _str(agent.get("model_name")),
         **_task(extra, session),
         "tags": tags if isinstance(tags, list) and all(isinstance(x, str) for x in tags) else [],
         "metadata": extra.get("metadata"),
         "start_time": _time(extra["start_time"]) if "start_time" in extra else first_time,
         "status": "incomplete" if incomplete else _str(outcome.get("status")) or "ok",
         "answer": None if incomplete else outcome.get("answer"),
         "verified": outcome.get("verified") if isinstance(outcome.get("verified"), bool) and not incomplete else None,
         "reward": None if incomplete else _number(outcome.get("reward")),
         "error": None if incomplete else _str(outcome.get("error")),
         "end_time": None if incomplete else (_time(outcome["end_time"]) if "end_time" in outcome else last_time)}
    original = {k: v for k, v in atif.items() if k != "steps"}

    def build(metadata: Any) -> dict:
        built = build_atif({**t, "metadata": metadata}, [])
        built.pop("steps")
        return built

    t["metadata"] = _with_patch(original, t["metadata"], build)
    return _records(t, rows, incomplete)


def _records(t: dict, rows: list[dict], incomplete: bool) -> list[dict]:
    tid = t["trajectory_id"]
    records = [{
        "v": 1, "type": "trajectory", "trajectory_id": tid,
        "agent": {"name": t["agent_name"], "version": t["agent_version"], "kind": t["agent_kind"],
                  "checkpoint": t["checkpoint"]},
        "task": {k: t[k] for k in ("family", "task_id", "split", "operation", "difficulty", "spec")},
        "tags": t["tags"], "metadata": t["metadata"], "start_time": t["start_time"], "model": t["model"],
    }]
    for row in rows:
        records.append({"v": 1, "type": "step", "trajectory_id": tid, "index": row["idx"],
                        **{k: row[k] for k in ("kind", "observation", "tool_name", "arguments", "result", "reward",
                                               "status", "error", "metadata", "start_time", "end_time", "model",
                                               "input_tokens", "output_tokens", "cost_usd", "call_id", "turn")}})
    if not incomplete:
        records.append({"v": 1, "type": "outcome", "trajectory_id": tid, "n_steps": len(rows),
                        **{k: t[k] for k in ("status", "answer", "verified", "reward", "error", "end_time")}})
    return records


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


# Export.

_TRAJECTORIES_SQL = """
SELECT t.trajectory_id::VARCHAR AS trajectory_id, a.name AS agent_name, a.version AS agent_version,
       a.kind AS agent_kind, a.checkpoint, t.model, t.family, t.task_id, k.split, k.operation, k.difficulty,
       k.spec, t.tags, t.metadata, t.start_time, t.status, t.answer, t.verified, t.reward, t.error, t.end_time
FROM (SELECT * FROM trajectories {where}) t JOIN agents a USING (agent_id) LEFT JOIN tasks k USING (task_id)
ORDER BY 1
"""
_STEPS_SQL = """
SELECT s.trajectory_id::VARCHAR AS trajectory_id, s.idx, s.turn, s.kind, s.observation, s.tool_name, s.arguments,
       s.result, s.reward, s.status, s.error, s.metadata, s.start_time, s.end_time, s.model, s.input_tokens,
       s.output_tokens, s.cost_usd, s.call_id
FROM steps s SEMI JOIN (SELECT trajectory_id FROM trajectories t {where}) USING (trajectory_id)
ORDER BY 1, s.idx
"""
_JSON_FIELDS = ("spec", "metadata", "answer", "observation", "arguments", "result")


def _as_row(row: dict) -> dict:
    for key in _JSON_FIELDS:
        if row.get(key) is not None:
            row[key] = orjson.loads(row[key])
    for key in ("start_time", "end_time"):
        if key in row:
            row[key] = _format_time(row[key])
    return row


def _rows(con: duckdb.DuckDBPyConnection, sql: str) -> Iterable[dict]:
    cursor = con.execute(sql)
    names = [d[0] for d in cursor.description]
    while batch := cursor.fetchmany(10_000):
        for values in batch:
            yield _as_row(dict(zip(names, values, strict=True)))


def export_atif(con: duckdb.DuckDBPyConnection, out: Path, where: str | None = None) -> int:
    """Write trajectories (all, or those matching the SQL condition `where` over the trajectories
    table) to `out` as ATIF JSONL, one trajectory per line. Returns how many. `con` may be a
    read-only sandbox (no file access): the rows are read in SQL and the lines written here."""
    clause = f"WHERE {one_expression(where)}" if where else ""
    try:
        steps = _rows(con.cursor(), _STEPS_SQL.format(where=clause))
        pending = next(steps, None)
        n = 0
        with open(out, "wb") as f:
            for trajectory in _rows(con.cursor(), _TRAJECTORIES_SQL.format(where=clause)):
                rows = []
                while pending is not None and pending["trajectory_id"] == trajectory["trajectory_id"]:
                    rows.append(pending)
                    pending = next(steps, None)
                f.write(orjson.dumps(build_atif(trajectory, rows)) + b"\n")
                n += 1
    except duckdb.Error as err:
        raise StoreError(f"ATIF export failed (check --where {where!r}): {err}") from err
    return n
