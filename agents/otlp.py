"""OpenTelemetry GenAI spans -> our records (agents/sdk.py wire format, JSON lines).

An OTLP trace request (`ExportTraceServiceRequest`, decoded by `opentelemetry-proto`) maps by the
GenAI semantic conventions (https://opentelemetry.io/docs/specs/semconv/gen-ai/):

  trajectory   <- gen_ai.conversation.id when a span of the trace in the same request carries it
                  (uuid5 of it), else the trace id (as a UUID): a span that comes alone in a
                  request needs the attribute itself to join its conversation. Its record comes with the trace's top span (the
                  outermost `invoke_agent` span, else the root span), which a tracer exports last,
                  when the run ends: agent <- that span's gen_ai.agent.name / gen_ai.agent.version
                  (else another span's, else the resource's service.name / service.version), kind
                  "external"; task: family "external", task_id the conversation or trace id;
                  model <- its gen_ai.request.model; start_time <- its start; metadata <- the
                  resource's attributes. Steps of a trace whose top span never arrives (the agent
                  died) are stored without a trajectory row (their metadata holds the trace id).
  step         <- every span: `chat` / `text_completion` / `generate_content` -> kind "llm" with
                  model (gen_ai.response.model, else gen_ai.request.model), input_tokens,
                  output_tokens (gen_ai.usage.*), cost_usd (gen_ai.usage.cost, when an
                  instrumentation sets it), observation / result <- gen_ai.input.messages /
                  gen_ai.output.messages; `execute_tool` -> kind "tool_call" with tool_name,
                  call_id, arguments and result (gen_ai.tool.*); `invoke_agent` -> kind "agent";
                  any other span -> kind "span". Span status ERROR -> status "error" and its
                  message as error. Times are the span's. Every attribute not mapped to a column,
                  the span's name, ids, kind, events and scope are kept in the step's metadata.
  outcome      <- the top span: status and error from its span status, end_time its end. A
                  conversation (many traces) has none: it stays "incomplete", and its start
                  record holds nothing that differs between its traces (no start_time, no trace
                  id), so each trace's copy is the same record again.

Spans of one trace may come in any order and in many requests (a batch processor exports spans
as they end), so a step's index cannot be a counter: it is the span id's first 31 bits (order a
trajectory's OTLP steps by start_time; two spans of one trace with the same 31 bits, about 1 in 4
billion per pair, make the later one a conflicting step that ingest quarantines, not loses).
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.common.v1.common_pb2 import AnyValue
from opentelemetry.proto.trace.v1.trace_pb2 import Span, Status

_NAMESPACE = uuid.UUID("0b6c7f4e-5a0e-4d8e-9c55-7f2b0d3c1a90")  # conversation id -> trajectory id
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
LLM_OPERATIONS = ("chat", "text_completion", "generate_content")
_KIND = {**dict.fromkeys(LLM_OPERATIONS, "llm"), "execute_tool": "tool_call", "invoke_agent": "agent"}


def value(v: AnyValue) -> Any:
    """An OTLP AnyValue as a plain JSON value (bytes as hex)."""
    which = v.WhichOneof("value")
    if which is None:
        return None
    if which == "array_value":
        return [value(x) for x in v.array_value.values]
    if which == "kvlist_value":
        return {kv.key: value(kv.value) for kv in v.kvlist_value.values}
    if which == "bytes_value":
        return v.bytes_value.hex()
    return getattr(v, which)


def attributes(kvs: Iterable) -> dict[str, Any]:
    return {kv.key: value(kv.value) for kv in kvs}


def _json_text(v: Any) -> Any:
    """An attribute that holds JSON as text (tool arguments, messages) as the value it encodes."""
    if v is None:
        return None
    if isinstance(v, str) and v[:1] in ("{", "["):
        try:
            return orjson.loads(v)
        except orjson.JSONDecodeError:
            pass
    return v


def _time(nanos: int) -> str | None:
    if not nanos:
        return None
    return (_EPOCH + timedelta(microseconds=nanos // 1000)).isoformat().replace("+00:00", "Z")


def _int(v: Any) -> int | None:
    return v if isinstance(v, int) and not isinstance(v, bool) and v >= 0 else None


def _str(v: Any) -> str | None:
    return v if isinstance(v, str) else None


def _number(v: Any) -> float | None:
    return float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else None


def step_index(span_id: bytes) -> int:
    """A span's step index: its id's first 31 bits (see the module docstring)."""
    return int.from_bytes(span_id[:4].rjust(4, b"\0"), "big") & 0x7FFF_FFFF


def request_records(request: ExportTraceServiceRequest) -> list[dict]:
    """Every span of the request as our records: per trajectory a start record, its steps, and an
    outcome when its top agent span (or root span) is among them."""
    records: list[dict] = []
    for resource_spans in request.resource_spans:
        resource = attributes(resource_spans.resource.attributes)
        spans = [(scope_spans.scope, span) for scope_spans in resource_spans.scope_spans
                 for span in scope_spans.spans]
        by_trace: dict[bytes, list[tuple[Any, Span, dict]]] = {}
        for scope, span in spans:
            by_trace.setdefault(span.trace_id, []).append((scope, span, attributes(span.attributes)))
        for trace_id, trace_spans in by_trace.items():
            records += _trace_records(trace_id, trace_spans, resource)
    return records


def _trace_records(trace_id: bytes, spans: list[tuple[Any, Span, dict]], resource: dict) -> list[dict]:
    def first(key: str) -> Any:
        return next((a[key] for _, _, a in spans if isinstance(a.get(key), str) and a[key]), None)

    conversation = first("gen_ai.conversation.id")
    tid = str(uuid.uuid5(_NAMESPACE, conversation)) if conversation else str(uuid.UUID(bytes=trace_id.rjust(16, b"\0")))
    agents = [(s, a) for _, s, a in spans if a.get("gen_ai.operation.name") == "invoke_agent"]
    agent_ids = {s.span_id for s, _ in agents}
    top = next((s for s, _ in agents if s.parent_span_id not in agent_ids), None)
    if top is None:  # no agent span: the trace's root span ends the trajectory
        top = next((s for _, s, _ in spans if not s.parent_span_id), None)
    steps = [_step(tid, scope, span, attrs) for scope, span, attrs in spans]
    if top is None:  # the trace's top span comes in a later request, and with it the trajectory
        return steps
    top_attrs = next(a for _, s, a in spans if s is top)
    name = _str(top_attrs.get("gen_ai.agent.name")) or first("gen_ai.agent.name")
    version = _str(top_attrs.get("gen_ai.agent.version")) or first("gen_ai.agent.version")
    start = {
        "v": 1, "type": "trajectory", "trajectory_id": tid,
        "agent": {"name": name or str(resource.get("service.name") or "otel"),
                  "version": str(version or resource.get("service.version") or "0"),
                  "kind": "external", "checkpoint": None},
        "task": {"family": "external", "task_id": conversation or trace_id.hex()},
        "tags": ["otlp"],
        # A conversation's traces each bring this record: it holds nothing that differs between them.
        "metadata": {"resource": resource} if conversation else {"resource": resource, "trace_id": trace_id.hex()},
        "start_time": None if conversation else _time(top.start_time_unix_nano),
        "model": _str(top_attrs.get("gen_ai.request.model")),
    }
    if conversation:  # a conversation goes on: no outcome (it stays "incomplete")
        return [start, *steps]
    error = top.status.code == Status.STATUS_CODE_ERROR
    outcome = {"v": 1, "type": "outcome", "trajectory_id": tid, "status": "error" if error else "ok",
               "error": (top.status.message or "error") if error else None, "answer": None,
               "verified": None, "reward": None, "n_steps": None, "end_time": _time(top.end_time_unix_nano)}
    return [start, *steps, outcome]


def _step(tid: str, scope: Any, span: Span, attrs: dict) -> dict:
    operation = attrs.get("gen_ai.operation.name")
    kind = _KIND.get(operation, "span") if isinstance(operation, str) else "span"
    error = span.status.code == Status.STATUS_CODE_ERROR
    step = {
        "v": 1, "type": "step", "trajectory_id": tid, "index": step_index(span.span_id), "kind": kind,
        "status": "error" if error else "ok", "error": (span.status.message or "error") if error else None,
        "start_time": _time(span.start_time_unix_nano), "end_time": _time(span.end_time_unix_nano),
    }
    taken = {"gen_ai.operation.name"} if kind != "span" else set()  # attributes that became columns

    def take(column: str, key: str, convert) -> None:
        converted = convert(attrs.get(key))
        if converted is not None:
            step[column] = converted
            taken.add(key)

    if kind == "llm":
        response_model = attrs.get("gen_ai.response.model")
        take("model", "gen_ai.response.model" if isinstance(response_model, str) else "gen_ai.request.model", _str)
        take("input_tokens", "gen_ai.usage.input_tokens", _int)
        take("output_tokens", "gen_ai.usage.output_tokens", _int)
        take("cost_usd", "gen_ai.usage.cost", _number)
        take("observation", "gen_ai.input.messages", _json_text)
        take("result", "gen_ai.output.messages", _json_text)
    elif kind == "tool_call":
        take("tool_name", "gen_ai.tool.name", _str)
        take("call_id", "gen_ai.tool.call.id", _str)
        take("arguments", "gen_ai.tool.call.arguments", _json_text)
        take("result", "gen_ai.tool.call.result", _json_text)
    metadata = {
        "span_name": span.name, "span_id": span.span_id.hex(), "parent_span_id": span.parent_span_id.hex() or None,
        "trace_id": span.trace_id.hex(), "span_kind": Span.SpanKind.Name(span.kind), "scope": scope.name or None,
        "attributes": {k: v for k, v in attrs.items() if k not in taken},
    }
    if span.events:
        metadata["events"] = [{"name": e.name, "time": _time(e.time_unix_nano), "attributes": attributes(e.attributes)}
                              for e in span.events]
    step["metadata"] = metadata
    return step


def records_jsonl(records: list[dict]) -> bytes:
    return b"".join(orjson.dumps(r) + b"\n" for r in records)
