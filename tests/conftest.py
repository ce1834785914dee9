"""Shared fixtures. Prefect's temporary server costs ~15 s to start: one per test session."""

from __future__ import annotations

import pytest


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
