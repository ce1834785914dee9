"""ATIF ingest -> export gives back the same JSON, for generated trajectories (hypothesis):
any mix of step fields, parallel calls with ids that match their results or not, content parts,
metrics of any shape, extra and notes at every level."""

from __future__ import annotations

import itertools

import duckdb
import orjson
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from storage.atif import atif_segment, export_atif
from storage.ingest import ingest_segments
from storage.store import migrate

text = st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"), max_size=12)
scalars = st.none() | st.booleans() | st.integers(-(1 << 63), (1 << 63) - 1) | st.floats(
    allow_nan=False, allow_infinity=False) | text
json_values = st.recursive(scalars, lambda inner: st.lists(inner, max_size=3) | st.dictionaries(text, inner, max_size=3),
                           max_leaves=8)
times = st.sampled_from(["2026-01-01T00:00:00Z", "2026-01-01T00:00:00.123456Z", "2026-01-01T02:00:00+02:00",
                         "2026-01-01 00:00:01", "not a time"])
ids = st.sampled_from(["c1", "c2", "c3", "call_0", "call_4"]) | text


def optional(**fields):
    """An object with any subset of the given fields, plus maybe some others."""
    return st.fixed_dictionaries({}, optional=fields).flatmap(
        lambda d: st.dictionaries(text.filter(lambda k: k not in fields), json_values, max_size=2).map(
            lambda more: {**more, **d}))


content = json_values | st.lists(st.fixed_dictionaries({"type": st.just("text"), "text": text}), max_size=2)
tool_call = optional(tool_call_id=ids | json_values, function_name=text | json_values, arguments=json_values)
result = optional(source_call_id=ids | st.none(), content=content)
metrics = optional(prompt_tokens=st.integers(0, 10**9) | json_values, completion_tokens=st.integers(0, 10**9),
                   cached_tokens=st.integers(0, 10**9), cost_usd=st.floats(0, 10, allow_nan=False) | json_values,
                   logprobs=st.lists(st.floats(-5, 0), max_size=2), extra=json_values)
step_extra = optional(kind=text | json_values, status=st.sampled_from(["ok", "error"]) | json_values,
                      error=text | json_values, reward=st.floats(-1, 1) | json_values, metadata=json_values,
                      observation=json_values, end_time=times, rows=json_values)
step = optional(timestamp=times | json_values, source=st.sampled_from(["system", "user", "agent"]) | json_values,
                message=content, model_name=text | json_values, reasoning_content=text | json_values,
                tool_calls=st.lists(tool_call, max_size=4) | json_values,
                observation=optional(results=st.lists(result, max_size=4)) | json_values,
                metrics=metrics | json_values, extra=step_extra | json_values)
trajectory = st.fixed_dictionaries(
    {"schema_version": st.sampled_from([f"ATIF-v1.{n}" for n in range(2, 8)]),
     "agent": optional(version=text | json_values, model_name=text | json_values,
                       tool_definitions=st.lists(json_values, max_size=2),
                       extra=optional(kind=text | json_values, checkpoint=text | json_values)).map(
         lambda a: {**a, "name": "agent"}),
     "steps": st.lists(step.map(lambda s: {"step_id": 0, **s}), max_size=5)},
    optional={"notes": text | json_values, "final_metrics": json_values,
              "extra": optional(task=json_values, tags=st.lists(text, max_size=2) | json_values,
                                metadata=json_values, start_time=times | json_values,
                                outcome=optional(status=st.sampled_from(["ok", "error", "incomplete"]) | json_values,
                                                 answer=json_values, verified=st.booleans() | json_values,
                                                 reward=st.floats(-1, 1) | json_values, error=text | json_values,
                                                 end_time=times | json_values))})
_session = itertools.count()


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(trajectory)
@example({"schema_version": "ATIF-v1.2", "agent": {"name": "agent"}, "steps": [], "extra": {"metadata": {}}})
def test_generated_atif_trajectories_round_trip_exactly(tmp_path, atif):
    atif["session_id"] = f"s-{next(_session)}"
    for n, s in enumerate(atif["steps"], start=1):
        s["step_id"] = n if n % 3 else f"{n}"  # mostly 1-based, sometimes not even an integer
    con = duckdb.connect()
    migrate(con)
    data = orjson.dumps(atif)
    report = ingest_segments(con, [atif_segment("gen.json", data)])
    assert report.quarantined == 0, con.execute("SELECT reason, raw FROM quarantine").fetchall()
    out = tmp_path / "out.jsonl"
    assert export_atif(con, out) == 1
    back = orjson.loads(out.read_bytes())
    assert orjson.dumps(back, option=orjson.OPT_SORT_KEYS) == orjson.dumps(atif, option=orjson.OPT_SORT_KEYS)
