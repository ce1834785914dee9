"""Shared fixtures. Prefect's temporary server costs ~15 s to start: one per test process (each
pytest-xdist worker starts its own)."""

from __future__ import annotations

import os

import pytest

# `make test` runs the suite with pytest-xdist, a worker process per core. torch's default (a thread
# per core in every process) would oversubscribe the cores and slow every test down: the workers
# share the cores instead, unless the caller chose. Set before any test imports torch; the
# subprocesses tests start inherit it.
_workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
if _workers > 1:
    os.environ.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // _workers)))


@pytest.fixture
def home(tmp_path, monkeypatch):
    """A fresh grokloop home, also set as $GROKLOOP_HOME for code that reads the default."""
    monkeypatch.setenv("GROKLOOP_HOME", str(tmp_path))
    return tmp_path


@pytest.fixture(scope="session")
def prefect_server():
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=120):
        yield


@pytest.fixture(scope="session")
def postgres():
    """A PostgreSQL server of our own (Debian's package: `make setup` installs it), on a temporary
    data directory and a free port on 127.0.0.1, stopped at the end: the DuckLake catalog."""
    from tests.postgres_server import PostgresServer

    server = PostgresServer.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def lake_store(postgres, home, monkeypatch):
    """A fresh DuckLake store (its own database on the test server, data under `home`), set as
    $GROKLOOP_STORE: its URL."""
    url = postgres.new_store()
    monkeypatch.setenv("GROKLOOP_STORE", url)
    return url
