"""An OTLP/HTTP trace collector: OpenTelemetry spans from any agent framework -> spool segments.

    grokloop collector --host 127.0.0.1 --port 4318        # then: OTEL_EXPORTER_OTLP_ENDPOINT=http://127.0.0.1:4318

`POST /v1/traces` takes an `ExportTraceServiceRequest`, protobuf (`application/x-protobuf`) or
OTLP JSON (`application/json`), plain or gzip. Its spans become our records (`agents/otlp.py`)
and are published as one JSONL spool segment (write, fsync, atomic rename: `storage.spool.
write_segment`, as the SDK publishes) before the response goes out, so a request the collector
acknowledged is on disk even if the process is killed the next instant; `grokloop ingest` stores
them like any other segment.

Security:
- A bearer token (`Authorization: Bearer ...`, `GROKLOOP_COLLECTOR_TOKEN` or a token file) is
  required when one is set; without a token the collector listens only on a loopback address.
  A refused request (401, 413, 415, 429) writes nothing.
- Limits: the request body (`max_body_bytes`, compressed and again after gzip), and requests per
  second across all clients (`rate`, a token bucket; 429 with Retry-After, which OTLP exporters
  honour).
- A body that does not decode (not protobuf, not OTLP JSON, bad gzip) gets 400 and is kept: a
  `.rejected` spool file (the reason on its first line, then the bytes) that ingest puts in the
  quarantine table with the reason.
- Nothing a client sends names a file: segment names are made here (UUIDv7, pid).
"""

from __future__ import annotations

import base64
import hmac
import ipaddress
import os
import threading
import time
import zlib
from pathlib import Path

import orjson
import uvicorn
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response
from google.protobuf import json_format
from google.protobuf.message import DecodeError
from google.rpc.status_pb2 import Status
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from starlette.concurrency import run_in_threadpool

from agents.otlp import records_jsonl, request_records
from storage.spool import JSONL_SUFFIX, REJECTED_SUFFIX, write_segment

MAX_BODY_BYTES = 8 << 20
TOKEN_ENV = "GROKLOOP_COLLECTOR_TOKEN"
_PROTOBUF = "application/x-protobuf"


class BadRequest(ValueError):
    """A request body that is not an OTLP trace request."""


class RateLimiter:
    """A token bucket: `rate` requests per second on average, bursts of up to `rate`."""

    def __init__(self, rate: float):
        self.rate, self.tokens, self.last = rate, rate, time.monotonic()
        self.lock = threading.Lock()

    def allow(self) -> bool:
        with self.lock:
            now = time.monotonic()
            self.tokens = min(self.rate, self.tokens + (now - self.last) * self.rate)
            self.last = now
            if self.tokens < 1:
                return False
            self.tokens -= 1
            return True


def read_token(token_file: str | Path | None = None) -> str | None:
    """The collector's token: from `token_file`, else $GROKLOOP_COLLECTOR_TOKEN, else None."""
    token = Path(token_file).read_text().strip() if token_file else os.environ.get(TOKEN_ENV)
    if token is not None and not token.strip():
        raise ValueError(f"the collector token ({token_file or '$' + TOKEN_ENV}) is empty")
    return token.strip() if token else None


def check_bind(host: str, token: str | None) -> None:
    """Refuse to listen beyond loopback without a token: anyone who can reach it could write."""
    if token:
        return
    try:
        loopback = host == "localhost" or ipaddress.ip_address(host).is_loopback
    except ValueError:
        loopback = False
    if not loopback:
        raise ValueError(f"refusing to listen on {host} without a token: set ${TOKEN_ENV} or pass "
                         f"--token-file (without a token the collector listens on 127.0.0.1 only)")


def decode_request(body: bytes, content_type: str) -> ExportTraceServiceRequest:
    """Protobuf or OTLP JSON (ids as hex, as OTLP/JSON has them) -> the request. BadRequest if not."""
    request = ExportTraceServiceRequest()
    if content_type == _PROTOBUF:
        try:
            request.ParseFromString(body)
        except DecodeError as err:
            raise BadRequest(f"not an OTLP protobuf trace request: {err}") from err
        return request
    if content_type == "application/json":
        try:
            data = orjson.loads(body)
            for resource_spans in data.get("resourceSpans") or []:
                for scope_spans in resource_spans.get("scopeSpans") or []:
                    for span in scope_spans.get("spans") or []:
                        _hex_ids_to_base64(span)
                        for link in span.get("links") or []:
                            _hex_ids_to_base64(link)
            json_format.ParseDict(data, request)
        except (orjson.JSONDecodeError, json_format.ParseError, AttributeError, TypeError, ValueError) as err:
            raise BadRequest(f"not an OTLP JSON trace request: {err}") from err
        return request
    raise BadRequest(f"unsupported content type {content_type!r}: expected {_PROTOBUF} or application/json")


def _hex_ids_to_base64(obj: dict) -> None:
    # OTLP/JSON writes trace and span ids as hex; protobuf's JSON mapping reads bytes as base64.
    for key in ("traceId", "spanId", "parentSpanId"):
        if obj.get(key):
            try:
                obj[key] = base64.b64encode(bytes.fromhex(obj[key])).decode()
            except (ValueError, TypeError) as err:
                raise BadRequest(f"{key} is not hex: {obj[key]!r}") from err


def _gunzip(body: bytes, limit: int) -> bytes:
    inflater = zlib.decompressobj(wbits=16 + zlib.MAX_WBITS)
    try:
        data = inflater.decompress(body, limit + 1)
    except zlib.error as err:
        raise BadRequest(f"bad gzip body: {err}") from err
    if len(data) > limit:
        raise _TooLarge(f"request body is over {limit} bytes once decompressed")
    if not inflater.eof:
        raise BadRequest("bad gzip body: truncated")
    return data


class _TooLarge(Exception):
    pass


def publish_spans(spool: Path, request: ExportTraceServiceRequest) -> Path | None:
    """The request's spans as one durable JSONL spool segment (None if it has no spans)."""
    records = request_records(request)
    if not records:
        return None
    return write_segment(spool, records_jsonl(records), suffix=JSONL_SUFFIX, prefix="otlp")


def publish_rejected(spool: Path, body: bytes, reason: str) -> Path:
    """A body that did not decode, with the reason, for ingest to quarantine."""
    line = " ".join(reason.split())[:500].encode()  # one line, whatever the error text held
    return write_segment(spool, line + b"\n" + body, suffix=REJECTED_SUFFIX, prefix="otlp")


def make_app(spool: Path, *, token: str | None = None, max_body_bytes: int = MAX_BODY_BYTES,
             rate: float = 200.0) -> FastAPI:
    """The collector as an ASGI app (`uvicorn.run(make_app(...))`)."""
    spool = Path(spool)
    limiter = RateLimiter(rate)
    expected = f"Bearer {token}".encode() if token else None
    app = FastAPI(title="grokloop OTLP collector", docs_url=None, redoc_url=None, openapi_url=None)

    def reply(status: int, message: str, protobuf: bool, **headers: str) -> Response:
        # OTLP/HTTP answers errors with a google.rpc.Status; the message is what exporters log.
        if protobuf:
            return Response(Status(code=status, message=message).SerializeToString(), status, headers,
                            media_type=_PROTOBUF)
        return JSONResponse({"code": status, "message": message}, status, headers)

    @app.post("/v1/traces")
    async def traces(request: Request) -> Response:
        content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
        protobuf = content_type == _PROTOBUF
        supplied = request.headers.get("authorization", "").encode()
        if expected is not None and not hmac.compare_digest(supplied, expected):
            return reply(401, "missing or wrong bearer token", protobuf, **{"WWW-Authenticate": "Bearer"})
        if not limiter.allow():
            return reply(429, "too many requests", protobuf, **{"Retry-After": "1"})
        declared = request.headers.get("content-length")
        if declared and declared.isdigit() and int(declared) > max_body_bytes:
            return reply(413, f"request body is over {max_body_bytes} bytes", protobuf)
        body = bytearray()
        async for chunk in request.stream():  # counted as it comes: a chunked body has no length
            body += chunk
            if len(body) > max_body_bytes:
                return reply(413, f"request body is over {max_body_bytes} bytes", protobuf)
        body = bytes(body)
        encoding = request.headers.get("content-encoding", "identity").strip().lower()
        if encoding not in ("identity", "gzip"):
            return reply(415, f"unsupported content encoding {encoding!r}: expected gzip or none", protobuf)
        try:
            data = _gunzip(body, max_body_bytes) if encoding == "gzip" else body
            decoded = decode_request(data, content_type)
        except _TooLarge as err:
            return reply(413, str(err), protobuf)
        except BadRequest as err:
            await run_in_threadpool(publish_rejected, spool, body, str(err))
            return reply(400, str(err), protobuf)
        await run_in_threadpool(publish_spans, spool, decoded)  # durable before the answer
        if protobuf:
            return Response(ExportTraceServiceResponse().SerializeToString(), media_type=_PROTOBUF)
        return JSONResponse({})

    @app.get("/healthz")
    async def healthz() -> dict:
        return {"ok": True}

    return app


def serve(spool: Path, host: str = "127.0.0.1", port: int = 4318, *, token: str | None = None,
          max_body_bytes: int = MAX_BODY_BYTES, rate: float = 200.0) -> None:
    """Run the collector until interrupted. ValueError (before listening) for a bind beyond
    loopback without a token."""
    check_bind(host, token)
    app = make_app(spool, token=token, max_body_bytes=max_body_bytes, rate=rate)
    uvicorn.run(app, host=host, port=port, log_level="warning", access_log=False)


