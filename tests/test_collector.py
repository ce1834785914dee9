"""The OTLP collector, fed by the real OpenTelemetry SDK and its OTLP/HTTP exporter: GenAI spans
become trajectories, steps, tokens and model; refused requests store nothing; a malformed body is
quarantined; SIGKILL right after an acknowledgement loses nothing acknowledged."""

from __future__ import annotations

import base64
import gzip
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import orjson
import pytest
import requests
from fastapi.testclient import TestClient
from google.protobuf import json_format
from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans
from opentelemetry.exporter.otlp.proto.http import Compression
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SimpleSpanProcessor, SpanExportResult
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import Status, StatusCode

from agents.collector import check_bind, make_app
from storage.ingest import ingest_spool
from storage.store import connect

TOKEN = "s3cret-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
RESOURCE = Resource.create({"service.name": "coder-svc", "service.version": "2.1", "deployment.environment": "test"})


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def collector(tmp_path):
    """`grokloop collector` in its own process on 127.0.0.1, with a token; yields (url, process)."""
    port = _free_port()
    env = {**os.environ, "GROKLOOP_HOME": str(tmp_path), "GROKLOOP_COLLECTOR_TOKEN": TOKEN,
           "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    proc = subprocess.Popen([sys.executable, "-m", "flows.cli", "collector", "--port", str(port)], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while True:
        try:
            requests.get(f"{url}/healthz", timeout=1)
            break
        except requests.ConnectionError:
            assert proc.poll() is None, proc.stderr.read().decode()
            assert time.monotonic() < deadline, "collector did not start"
            time.sleep(0.1)
    yield f"{url}/v1/traces", proc
    if proc.poll() is None:
        proc.terminate()
        proc.wait(timeout=10)


def _agent_run(tracer, n: int = 0) -> None:
    """One agent run as GenAI-instrumented frameworks trace it: an agent span, a model call, tools."""
    with tracer.start_as_current_span(f"invoke_agent coder {n}", attributes={
            "gen_ai.operation.name": "invoke_agent", "gen_ai.agent.name": "coder",
            "gen_ai.request.model": "gpt-4.1"}):
        with tracer.start_as_current_span("chat gpt-4.1", attributes={
                "gen_ai.operation.name": "chat", "gen_ai.request.model": "gpt-4.1",
                "gen_ai.response.model": "gpt-4.1-2025-04-14", "gen_ai.usage.input_tokens": 1200,
                "gen_ai.usage.output_tokens": 80, "gen_ai.usage.cost": 0.0031,
                "gen_ai.input.messages": '[{"role": "user", "parts": [{"type": "text", "content": "fix it"}]}]',
                "app.user": "u1"}):
            pass
        for call, (tool, args) in enumerate([("read_file", '{"path": "a.py"}'), ("read_file", '{"path": "b.py"}')]):
            with tracer.start_as_current_span(f"execute_tool {tool}", attributes={
                    "gen_ai.operation.name": "execute_tool", "gen_ai.tool.name": tool,
                    "gen_ai.tool.call.id": f"call_{n}_{call}", "gen_ai.tool.call.arguments": args,
                    "gen_ai.tool.call.result": "x = 1" if call == 0 else "no such file"}) as span:
                if call == 1:
                    span.set_status(Status(StatusCode.ERROR, "no such file"))


def _spans(runs: int = 1):
    memory = InMemorySpanExporter()
    provider = TracerProvider(resource=RESOURCE)
    provider.add_span_processor(SimpleSpanProcessor(memory))
    for n in range(runs):
        _agent_run(provider.get_tracer("test-agent"), n)
    return memory.get_finished_spans()


def test_spans_from_the_otel_sdk_land_as_trajectory_steps_tokens_and_model(collector, tmp_path):
    url, _ = collector
    provider = TracerProvider(resource=RESOURCE)
    provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter(endpoint=url, headers=AUTH,
                                                                    compression=Compression.Gzip)))
    _agent_run(provider.get_tracer("test-agent"))
    assert provider.force_flush(10_000)
    provider.shutdown()
    con = connect(tmp_path / "store.duckdb")
    report = ingest_spool(con, tmp_path / "spool")
    assert (report.trajectories, report.steps, report.quarantined) == (1, 4, 0)
    assert con.execute("SELECT agent_id, family, status, model FROM trajectories").fetchall() == [
        ("coder@2.1", "external", "ok", "gpt-4.1")]
    steps = con.execute("SELECT kind, tool_name, call_id, arguments->>'path', result->>'$', status, error, model, "
                        "input_tokens, output_tokens, cost_usd FROM steps ORDER BY start_time, kind").fetchall()
    assert steps == [
        ("agent", None, None, None, None, "ok", None, None, None, None, None),
        ("llm", None, None, None, None, "ok", None, "gpt-4.1-2025-04-14", 1200, 80, 0.0031),
        ("tool_call", "read_file", "call_0_0", "a.py", "x = 1", "ok", None, None, None, None, None),
        ("tool_call", "read_file", "call_0_1", "b.py", "no such file", "error", "no such file", None, None, None, None)]
    llm = con.execute("SELECT observation->'$[0]'->>'role', metadata->'attributes'->>'app.user', metadata->>'span_name' "
                      "FROM steps WHERE kind = 'llm'").fetchall()
    assert llm == [("user", "u1", "chat gpt-4.1")]
    assert con.execute("SELECT tokens, cost_usd, model_calls, tool_calls FROM usage "
                       "WHERE model = 'gpt-4.1-2025-04-14'").fetchall() == [(1280, 0.0031, 1, 0)]


def test_a_trace_in_many_requests_and_a_conversation_of_many_traces(collector, tmp_path):
    url, _ = collector
    provider = TracerProvider(resource=RESOURCE)  # one request per span, as each span ends
    provider.add_span_processor(SimpleSpanProcessor(OTLPSpanExporter(endpoint=url, headers=AUTH)))
    tracer = provider.get_tracer("test-agent")
    _agent_run(tracer)
    for turn in range(2):  # two traces of one conversation
        agent = {"gen_ai.operation.name": "invoke_agent", "gen_ai.agent.name": "chat-bot",
                 "gen_ai.conversation.id": "conv-1"}
        chat = {"gen_ai.operation.name": "chat", "gen_ai.request.model": "m", "gen_ai.usage.input_tokens": turn,
                "gen_ai.conversation.id": "conv-1"}  # alone in its request: it needs the id itself
        with tracer.start_as_current_span("invoke_agent chat-bot", attributes=agent), \
                tracer.start_as_current_span("chat m", attributes=chat):
            pass
    provider.shutdown()
    assert len(list((tmp_path / "spool").glob("*.jsonl"))) == 4 + 4
    con = connect(tmp_path / "store.duckdb")
    report = ingest_spool(con, tmp_path / "spool")
    assert (report.trajectories, report.steps, report.quarantined) == (2, 8, 0)
    rows = con.execute("SELECT agent_id, task_id, status, (SELECT count(*) FROM steps s WHERE "
                       "s.trajectory_id = t.trajectory_id) FROM trajectories t ORDER BY agent_id").fetchall()
    assert rows[0] == ("chat-bot@2.1", "conv-1", "incomplete", 4)
    assert rows[1][0] == "coder@2.1" and rows[1][2:] == ("ok", 4)


def test_without_the_token_401_and_nothing_stored(collector, tmp_path):
    url, _ = collector
    spans = _spans()
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": TOKEN}):
        assert OTLPSpanExporter(endpoint=url, headers=headers, timeout=5).export(spans) == SpanExportResult.FAILURE
        body = encode_spans(spans).SerializeToString()
        reply = requests.post(url, data=body, headers={**headers, "Content-Type": "application/x-protobuf"})
        assert reply.status_code == 401
    assert not (tmp_path / "spool").exists() or not any((tmp_path / "spool").iterdir())
    assert OTLPSpanExporter(endpoint=url, headers=AUTH).export(spans) == SpanExportResult.SUCCESS  # the right one


def test_a_malformed_body_gets_400_and_lands_in_quarantine_with_its_reason(collector, tmp_path):
    url, _ = collector
    garbage = b"\x0a\xff\xff\xff\xff\x0f not protobuf"
    reply = requests.post(url, data=garbage, headers={**AUTH, "Content-Type": "application/x-protobuf"})
    assert reply.status_code == 400
    bad_json = requests.post(url, data=b'{"resourceSpans": [{"scopeSpans": 7}]}',
                             headers={**AUTH, "Content-Type": "application/json"})
    assert bad_json.status_code == 400 and "OTLP JSON" in bad_json.json()["message"]
    con = connect(tmp_path / "store.duckdb")
    report = ingest_spool(con, tmp_path / "spool")
    assert (report.trajectories, report.quarantined) == (0, 2)
    rows = con.execute("SELECT raw, reason FROM quarantine ORDER BY reason DESC").fetchall()
    assert rows[0][0] == garbage and rows[0][1].startswith("not an OTLP protobuf trace request")
    assert rows[1][0] == b'{"resourceSpans": [{"scopeSpans": 7}]}' and rows[1][1].startswith("not an OTLP JSON")


def test_otlp_json_encoding_is_accepted(collector, tmp_path):
    url, _ = collector
    message = json_format.MessageToDict(encode_spans(_spans()))
    for resource in message["resourceSpans"]:  # OTLP/JSON ids are hex, not protobuf JSON's base64
        for scope in resource["scopeSpans"]:
            for span in scope["spans"]:
                for key in ("traceId", "spanId", "parentSpanId"):
                    if key in span:
                        span[key] = base64.b64decode(span[key]).hex()
    reply = requests.post(url, data=gzip.compress(orjson.dumps(message)),
                          headers={**AUTH, "Content-Type": "application/json", "Content-Encoding": "gzip"})
    assert reply.status_code == 200
    con = connect(tmp_path / "store.duckdb")
    assert ingest_spool(con, tmp_path / "spool").steps == 4
    assert con.execute("SELECT sum(input_tokens) FROM steps").fetchall() == [(1200,)]


def test_sigkill_right_after_acknowledging_loses_nothing_acknowledged(collector, tmp_path):
    url, proc = collector
    runs = _spans(runs=40)
    by_trace: dict[int, list] = {}
    for span in runs:
        by_trace.setdefault(span.context.trace_id, []).append(span)
    exporter = OTLPSpanExporter(endpoint=url, headers=AUTH, timeout=3)
    acknowledged: list[int] = []

    def send() -> None:
        for trace_id, spans in by_trace.items():
            if exporter.export(spans) != SpanExportResult.SUCCESS:
                return
            acknowledged.append(trace_id)

    sender = threading.Thread(target=send)
    sender.start()
    while len(acknowledged) < 5 and sender.is_alive():
        time.sleep(0.001)
    os.kill(proc.pid, signal.SIGKILL)  # right after an acknowledgement, with the next request in flight
    sender.join(timeout=60)
    assert proc.wait(timeout=10) == -signal.SIGKILL and len(acknowledged) >= 5
    con = connect(tmp_path / "store.duckdb")
    assert ingest_spool(con, tmp_path / "spool").quarantined == 0
    stored = con.execute("SELECT DISTINCT metadata->>'trace_id' FROM steps").fetchall()
    stored = {int(r[0], 16) for r in stored}
    assert set(acknowledged) <= stored
    counts = dict(con.execute("SELECT metadata->>'trace_id', count(*) FROM steps GROUP BY 1").fetchall())
    assert all(counts[f"{t:032x}"] == 4 for t in acknowledged)  # every span of each acknowledged request


@pytest.fixture
def app_client(tmp_path):
    def make(**kwargs) -> TestClient:
        return TestClient(make_app(tmp_path / "spool", token=TOKEN, **kwargs))
    return make


def test_limits_refuse_and_store_nothing(app_client, tmp_path):
    body = encode_spans(_spans()).SerializeToString()
    headers = {**AUTH, "Content-Type": "application/x-protobuf"}
    small = app_client(max_body_bytes=len(body) - 1)
    assert small.post("/v1/traces", content=body, headers=headers).status_code == 413
    bomb = gzip.compress(b"\0" * (len(body) * 50))  # small on the wire, large once inflated
    assert len(bomb) < len(body)
    assert small.post("/v1/traces", content=bomb, headers={**headers, "Content-Encoding": "gzip"}).status_code == 413
    assert app_client().post("/v1/traces", content=body, headers={**headers, "Content-Encoding": "br"}).status_code == 415
    limited = app_client(rate=3)
    codes = [limited.post("/v1/traces", content=b"", headers=headers).status_code for _ in range(6)]
    assert codes[:3] == [200, 200, 200] and 429 in codes[3:]
    assert not (tmp_path / "spool").exists() or not any((tmp_path / "spool").iterdir())  # empty requests: no spans


def test_binding_beyond_loopback_needs_a_token(tmp_path):
    for host in ("0.0.0.0", "192.168.1.10", "::", "example.org"):
        with pytest.raises(ValueError, match="without a token"):
            check_bind(host, None)
        check_bind(host, TOKEN)
    for host in ("127.0.0.1", "::1", "localhost"):
        check_bind(host, None)
    cli = subprocess.run([sys.executable, "-m", "flows.cli", "collector", "--host", "0.0.0.0"], capture_output=True,
                         text=True, env={**os.environ, "GROKLOOP_HOME": str(tmp_path), "GROKLOOP_COLLECTOR_TOKEN": "",
                                         "PYTHONPATH": str(Path(__file__).resolve().parents[1])}, timeout=60)
    assert cli.returncode == 2 and "token" in cli.stderr
    assert not (tmp_path / "spool").exists()
