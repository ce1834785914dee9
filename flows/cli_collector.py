"""`grokloop collector`: receive OpenTelemetry (OTLP/HTTP) traces from any agent into the spool."""

from __future__ import annotations

from pathlib import Path

import typer

from flows.cli_common import HOME, OneLineErrors, console
from storage.home import spool_dir

app = typer.Typer(cls=OneLineErrors, no_args_is_help=True)


@app.command()
def collector(
    host: str = typer.Option("127.0.0.1", help="address to listen on (beyond loopback only with a token)"),
    port: int = typer.Option(4318, help="port (4318 is OTLP/HTTP's)"),
    token_file: Path = typer.Option(None, help="file holding the bearer token (default $GROKLOOP_COLLECTOR_TOKEN)"),
    max_body_bytes: int = typer.Option(8 << 20, help="a larger request (compressed or not) gets 413"),
    rate: float = typer.Option(200.0, help="requests per second, all clients together; more get 429"),
    home: str = HOME,
) -> None:
    """Serve POST /v1/traces: spans become spool segments, durable before the request is
    acknowledged; `grokloop ingest` stores them."""
    # FastAPI and protobuf take about a second to import: only when the collector runs.
    from agents.collector import check_bind, read_token, serve

    token = read_token(token_file)
    check_bind(host, token)
    spool = spool_dir(home)
    console.print(f"collector on http://{host}:{port}/v1/traces -> {spool}"
                  + ("" if token else " (no token: loopback only)"))
    serve(spool, host, port, token=token, max_body_bytes=max_body_bytes, rate=rate)
