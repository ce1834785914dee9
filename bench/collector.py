"""Spans/s the OTLP collector acknowledges (durable in the spool) with 1 and 4 concurrent exporters,
beside the SDK's records/s for the same agent runs, in one run.

    .venv/bin/python bench/collector.py                        # 1 and 4 exporters, 40 batches of 512 spans each
    .venv/bin/python bench/collector.py --exporters 1 2 4 --batches 100

Each exporter is its own process with the OpenTelemetry SDK's OTLP/HTTP exporter (protobuf), sending
batches of `--batch-size` finished spans as the SDK's BatchSpanProcessor would (its default is
512); every batch is acknowledged only once the collector has written, fsync'ed and renamed its
spool segment. Spans are made before the clock starts; the rate is spans acknowledged / wall
time from the common start to the last acknowledgement. A GenAI agent run is 4 spans
(invoke_agent, chat, 2 x execute_tool). "SDK" is `TrajectoryLogger` logging the same runs (a start,
4 steps with model, tokens and tool calls, an outcome: 6 records) in one process, flushes included.
The collector and the exporters share this machine's cores (printed).
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

TOKEN = "bench-token"


def _spans(runs: int):
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    memory = InMemorySpanExporter()
    provider = TracerProvider(resource=Resource.create({"service.name": "bench"}))
    provider.add_span_processor(SimpleSpanProcessor(memory))
    tracer = provider.get_tracer("bench")
    for n in range(runs):
        with tracer.start_as_current_span("invoke_agent coder", attributes={
                "gen_ai.operation.name": "invoke_agent", "gen_ai.agent.name": "coder",
                "gen_ai.request.model": "m"}):
            with tracer.start_as_current_span("chat m", attributes={
                    "gen_ai.operation.name": "chat", "gen_ai.request.model": "m",
                    "gen_ai.usage.input_tokens": 1000 + n, "gen_ai.usage.output_tokens": 50}):
                pass
            for call in range(2):
                with tracer.start_as_current_span("execute_tool read", attributes={
                        "gen_ai.operation.name": "execute_tool", "gen_ai.tool.name": "read",
                        "gen_ai.tool.call.id": f"c{n}_{call}", "gen_ai.tool.call.arguments": '{"path": "a.py"}',
                        "gen_ai.tool.call.result": "x = 1"}):
                    pass
    return memory.get_finished_spans()


def _exporter(url: str, batches: int, batch_size: int, start_at: float) -> tuple[int, float]:
    """One exporter process: send `batches` batches from `start_at`; (spans acknowledged, end time)."""
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    from opentelemetry.sdk.trace.export import SpanExportResult

    spans = _spans(batches * batch_size // 4 + 1)
    exporter = OTLPSpanExporter(endpoint=url, headers={"Authorization": f"Bearer {TOKEN}"}, timeout=60)
    time.sleep(max(0.0, start_at - time.time()))
    acked = 0
    for b in range(batches):
        batch = spans[b * batch_size:(b + 1) * batch_size]
        if exporter.export(batch) == SpanExportResult.SUCCESS:
            acked += len(batch)
    return acked, time.time()


def _collector(home: Path) -> tuple[subprocess.Popen, str]:
    import requests

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {**os.environ, "GROKLOOP_HOME": str(home), "GROKLOOP_COLLECTOR_TOKEN": TOKEN}
    proc = subprocess.Popen([sys.executable, "-m", "flows.cli", "collector", "--port", str(port), "--rate", "1e9",
                             "--max-body-bytes", str(64 << 20)], env=env, stdout=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    for _ in range(600):
        try:
            requests.get(f"{url}/healthz", timeout=1)
            return proc, f"{url}/v1/traces"
        except requests.ConnectionError:
            time.sleep(0.1)
    raise RuntimeError("collector did not start")


def collector_rate(exporters: int, batches: int, batch_size: int) -> tuple[float, int, float]:
    with tempfile.TemporaryDirectory() as home:
        proc, url = _collector(Path(home))
        try:
            start_at = time.time() + 3.0 + exporters  # every process has made its spans by then
            ctx = multiprocessing.get_context("spawn")
            with ctx.Pool(exporters) as pool:
                results = pool.starmap(_exporter, [(url, batches, batch_size, start_at)] * exporters)
            acked = sum(r[0] for r in results)
            seconds = max(r[1] for r in results) - start_at
            segments = len(list((Path(home) / "spool").glob("*.jsonl")))
        finally:
            proc.terminate()
            proc.wait(timeout=10)
    assert segments == exporters * batches, (segments, exporters * batches)
    return acked / seconds, acked, seconds


def sdk_rate(runs: int) -> tuple[float, int, float]:
    from agents.sdk import TrajectoryLogger

    with tempfile.TemporaryDirectory() as spool:
        log = TrajectoryLogger("coder", "1", spool=spool)
        start = time.perf_counter()
        for n in range(runs):
            with log.trajectory({"family": "external", "task_id": f"t{n}"}, model="m") as t:
                turn = t.step(kind="llm", model="m", input_tokens=1000 + n, output_tokens=50)
                for call in range(2):
                    t.step(tool_name="read", arguments={"path": "a.py"}, result="x = 1", call_id=f"c{n}_{call}",
                           turn=turn)
                t.step(kind="agent")
                t.finish()
        log.close()
        seconds = time.perf_counter() - start
    records = runs * 6
    return records / seconds, records, seconds


def main() -> None:
    from rich.console import Console
    from rich.table import Table

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--exporters", type=int, nargs="+", default=[1, 4])
    ap.add_argument("--batches", type=int, default=40, help="batches per exporter")
    ap.add_argument("--batch-size", type=int, default=512, help="spans per batch (the SDK's default)")
    args = ap.parse_args()
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    table = Table(title=f"OTLP collector vs SDK, {cores} cores visible")
    for col in ("path", "items", "seconds", "items/s", "vs 1 exporter", "vs SDK records/s"):
        table.add_column(col, justify="right" if col != "path" else "left")
    sdk, sdk_records, sdk_seconds = sdk_rate(args.batches * args.batch_size // 4)
    rows, base = [], None
    for n in args.exporters:
        rate, acked, seconds = collector_rate(n, args.batches, args.batch_size)
        base = base or rate
        rows.append((f"collector, {n} exporter(s): spans acknowledged", acked, seconds, rate, rate / base, rate / sdk))
    rows.append(("SDK (TrajectoryLogger): records logged + flushed", sdk_records, sdk_seconds, sdk, None, 1.0))
    for path, items, seconds, rate, vs_one, vs_sdk in rows:
        table.add_row(path, f"{items:,}", f"{seconds:.2f}", f"{rate:,.0f}",
                      "" if vs_one is None else f"{vs_one:.2f}x", f"{vs_sdk:.3f}x")
    Console(width=150).print(table)


if __name__ == "__main__":
    main()
