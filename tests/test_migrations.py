"""Numbered migrations: an older store opens and migrates forward, the version recorded."""

from __future__ import annotations

import gzip
from pathlib import Path

import duckdb
import pytest

import storage.store as store
from storage.store import StoreError, connect, open_store, schema_version


def test_empty_file_at_version_0_migrates_to_latest(tmp_path):
    path = tmp_path / "old.duckdb"
    duckdb.connect(str(path)).close()  # a store from before any migration
    con = connect(path)
    latest = store.migrations()[-1][0]
    assert schema_version(con) == latest
    assert con.execute("SELECT version, name FROM schema_version ORDER BY version").fetchall()[0] == (1, "init")
    con.execute("SELECT * FROM trajectories, steps, quarantine, ingest_log LIMIT 0").fetchall()


def test_older_store_gets_newer_migrations_and_keeps_its_rows(tmp_path, monkeypatch):
    path = tmp_path / "store.duckdb"
    con = connect(path)
    con.execute("INSERT INTO agents (agent_id, name, version) VALUES ('a@1', 'a', '1')")
    con.close()
    newer = store.migrations() + [(99, "agent_notes", "ALTER TABLE agents ADD COLUMN notes VARCHAR;")]
    monkeypatch.setattr(store, "migrations", lambda: newer)
    con = connect(path)
    assert schema_version(con) == 99
    assert con.execute("SELECT agent_id, notes FROM agents").fetchall() == [("a@1", None)]
    con.close()
    assert schema_version(connect(path, read_only=True)) == 99  # applied once, recorded


def test_a_failing_migration_rolls_back_and_says_which(tmp_path, monkeypatch):
    path = tmp_path / "store.duckdb"
    connect(path).close()
    broken = store.migrations() + [(98, "broken", "ALTER TABLE agents ADD COLUMN x INTEGER; SELECT * FROM nope;")]
    monkeypatch.setattr(store, "migrations", lambda: broken)
    with pytest.raises(StoreError, match="0098_broken.sql failed"):
        connect(path)
    monkeypatch.undo()
    con = connect(path, read_only=True)
    assert schema_version(con) == store.migrations()[-1][0]
    assert "x" not in [c[0] for c in con.execute("DESCRIBE agents").fetchall()]


def test_a_reader_of_an_older_store_gets_every_view_its_schema_can_serve(tmp_path):
    """A store an older grokloop still writes: its steps table lacks a column the `usage` view reads
    and its stored views predate `curve_grokking`. Opened read-only here, every view of views.sql
    that the schema can serve is there, those after `usage` in the file too."""
    path = tmp_path / "store.duckdb"
    with open_store(path) as con:
        con.execute("DROP VIEW usage; DROP VIEW run_progress; DROP VIEW cluster_grokking; DROP VIEW curve_grokking; "
                    "ALTER TABLE steps DROP COLUMN cost_usd")
    with open_store(path, read_only=True) as con:
        for view in ("curve_grokking", "cluster_grokking", "run_progress", "latest_checkpoints"):
            assert con.execute(f"SELECT count(*) FROM {view}").fetchone() == (0,)
        with pytest.raises(duckdb.CatalogException, match="usage"):
            con.execute("SELECT * FROM usage")


def test_a_store_written_by_duckdb_2_is_refused_in_one_line_and_left_as_it_was(tmp_path):
    # grokloop used DuckDB 2.0 before it pinned 1.5.5 (the DuckLake extension wheels): such a
    # store cannot be read here. The fixture is a store file DuckDB 2.0 wrote.
    data = gzip.decompress((Path(__file__).parent / "data" / "store_duckdb_2.0.duckdb.gz").read_bytes())
    path = tmp_path / "store.duckdb"
    path.write_bytes(data)
    for read_only in (True, False):
        with pytest.raises(StoreError) as err, open_store(path, read_only=read_only):
            pass
        message = str(err.value)
        assert "\n" not in message and "newer DuckDB" in message and "EXPORT DATABASE" in message
    assert path.read_bytes() == data
