"""The shared store (issue 19): the same schema, views, ingest rules and `grokloop sql` on DuckLake,
with a PostgreSQL catalog the tests start themselves (tests/postgres_server.py) and Parquet data in
the home. Two ingest processes append at once while readers query: every trajectory exactly once,
no reader error, no writer waiting on a reader."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import duckdb
import orjson
import pytest
from typer.testing import CliRunner

from storage import lake
from storage.home import store_location
from storage.ingest import ingest_paths
from storage.query import run_sql
from storage.store import StoreError, connect, migrations, open_store, schema_version

ROOT = Path(__file__).resolve().parents[1]

# An agent process: trajectories of two steps whose start and outcome often land in different
# segments (so a worker that took its segments out of order would quarantine the outcome), and
# tasks shared by every producer (so two workers add the same new task at once).
PRODUCER = """
import sys
from agents.sdk import TrajectoryLogger
spool, n, seed = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
log = TrajectoryLogger("producer", str(seed), spool=spool, flush_seconds=3600)
for i in range(n):
    t = log.trajectory({"family": "modular", "task_id": f"m/{i % 5}"})
    t.step(result=i)
    if i % 2 == 0:
        log.flush()
    t.step(result=i + 1)
    t.finish(answer=[i], verified=i % 3 == 0, reward=1.0)
    if i % 3 == 0:
        log.flush()
log.close()
"""

# An ingest worker: one connection, one segment per batch (so the two workers meet often).
WORKER = """
import json, sys
from storage.ingest import ingest_spool
from storage.store import connect
con = connect()
report = ingest_spool(con, sys.argv[1], batch_bytes=1)
print(json.dumps({"segments": report.segments, "held": report.held, "skipped": report.skipped,
                  "trajectories": report.trajectories, "quarantined": report.quarantined}))
"""


def _env() -> dict:
    return {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}


def test_two_ingest_workers_and_readers_at_once(lake_store, home):
    spool, producers, per_producer = home / "spool", 3, 8
    for seed in range(producers):
        subprocess.run([sys.executable, "-c", PRODUCER, str(spool), str(per_producer), str(seed)],
                       env=_env(), check=True)
    segments = sorted(spool.glob("*.arrow"))
    expected = producers * per_producer
    connect().close()  # the store made (migrated) once, before the race

    # A reader holds a transaction open across the whole ingest (on the embedded file, a writer
    # would wait for it); another queries in a loop.
    held = connect(read_only=True)
    held.execute("BEGIN")
    assert held.execute("SELECT count(*) FROM trajectories").fetchall() == [(0,)]
    counts, errors, done = [], [], threading.Event()

    def read_loop() -> None:
        while not done.is_set():
            try:
                counts.append(run_sql("SELECT count(*) AS n FROM trajectories").column("n")[0].as_py())
            except Exception as err:  # every error is a failure of the test
                errors.append(err)

    reader = threading.Thread(target=read_loop)
    reader.start()
    workers = [subprocess.Popen([sys.executable, "-c", WORKER, str(spool)], env=_env(),
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(2)]
    results = []
    for worker in workers:
        out, err = worker.communicate(timeout=300)
        assert worker.returncode == 0, err
        results.append(json.loads(out.strip().splitlines()[-1]))
    done.set()
    reader.join()

    # The held transaction still reads its snapshot: the writers never waited for it.
    assert held.execute("SELECT count(*) FROM trajectories").fetchall() == [(0,)]
    held.execute("COMMIT")
    held.close()
    assert not errors, errors[:3]
    assert counts and counts == sorted(counts) and counts[-1] <= expected
    assert all(r["segments"] > 0 for r in results), results  # both workers did ingest
    assert sum(r["segments"] for r in results) == len(segments)
    assert sum(r["quarantined"] for r in results) == 0

    con = connect(read_only=True)
    one = lambda sql: con.execute(sql).fetchall()[0]  # noqa: E731
    assert one("SELECT count(*), count(DISTINCT trajectory_id) FROM trajectories") == (expected, expected)
    assert one("SELECT count(*) FROM trajectories WHERE status = 'ok' AND n_steps = 2") == (expected,)
    assert one("SELECT count(*), count(DISTINCT (trajectory_id, idx)) FROM steps") == (2 * expected, 2 * expected)
    assert one("SELECT count(*), count(DISTINCT task_id) FROM tasks") == (5, 5)
    assert one("SELECT count(*), count(DISTINCT agent_id) FROM agents") == (producers, producers)
    assert one("SELECT count(*), count(DISTINCT segment_hash) FROM ingest_log") == (len(segments), len(segments))
    assert one("SELECT count(*) FROM quarantine") == (0,)
    assert one("SELECT sum(trajectories)::INTEGER FROM success_rate") == (expected,)  # a view, over the lake
    con.close()
    assert not list(spool.glob("*.arrow"))  # every segment moved to ingested/
    assert len(list((spool / "ingested").glob("*.arrow"))) == len(segments)


def _jsonl(path: Path, records: list[dict]) -> Path:
    path.write_bytes(b"".join(orjson.dumps(r) + b"\n" for r in records))
    return path


TID = "01900000-0000-7000-8000-0000000000d1"
START = {"type": "trajectory", "trajectory_id": TID, "agent": {"name": "a", "version": "1"},
         "task": {"family": "modular", "task_id": "m/1"}}
OUTCOME = {"type": "outcome", "trajectory_id": TID, "status": "ok", "verified": True, "reward": 1.0,
           "n_steps": 2, "answer": [4]}


def test_quarantine_and_exactly_once_on_the_lake(lake_store, tmp_path):
    steps = [{"type": "step", "trajectory_id": TID, "index": i, "result": i} for i in range(2)]
    first = _jsonl(tmp_path / "first.jsonl", [START, *steps, steps[1], OUTCOME, {"type": "step"}])
    con = connect()
    report = ingest_paths(con, [first])
    # The repeated step (no primary key on DuckLake) lands once; the bad record is quarantined.
    assert (report.trajectories, report.steps, report.quarantined) == (1, 2, 1)
    assert ingest_paths(con, [first]).skipped == 1  # the same bytes again: nothing changes
    later = _jsonl(tmp_path / "later.jsonl", [{**OUTCOME, "status": "error", "reward": -5.0}])
    assert ingest_paths(con, [later]).quarantined == 1
    assert con.execute("SELECT status, reward FROM trajectories").fetchall() == [("ok", 1.0)]
    reasons = [r for (r,) in con.execute("SELECT reason FROM quarantine ORDER BY ingested_at").fetchall()]
    assert len(reasons) == 2 and reasons[1].startswith(f"outcome for trajectory {TID} conflicts with the stored")
    assert con.execute("SELECT count(*) FROM steps").fetchall() == [(2,)]
    con.close()


def test_grokloop_sql_reads_the_lake_in_its_sandbox(lake_store, tmp_path):
    from flows.cli import app

    con = connect()
    ingest_paths(con, [_jsonl(tmp_path / "a.jsonl", [START, OUTCOME])])
    con.close()
    runner = CliRunner()
    result = runner.invoke(app, ["sql", "SELECT family, trajectories FROM success_rate", "--format", "csv"])
    assert result.exit_code == 0, result.output
    assert '"modular",1' in result.output
    secret = tmp_path / "secret.txt"
    secret.write_text("x")
    for query in [f"SELECT * FROM read_csv('{secret}')", f"COPY (SELECT 1) TO '{tmp_path}/out.csv'",
                  "SET threads = 1", "DELETE FROM trajectories"]:
        result = runner.invoke(app, ["sql", query])
        assert result.exit_code == 2 and "refused" in result.output, (query, result.output)
    assert not (tmp_path / "out.csv").exists()
    assert run_sql("SELECT count(*) AS n FROM trajectories").column("n")[0].as_py() == 1


def test_a_lake_made_at_schema_1_migrates_forward(postgres, home, monkeypatch):
    url = postgres.new_store()
    con = lake.connect(url, read_only=False, home=home, reader_config={})
    first = migrations()[0]
    con.execute("CREATE TABLE schema_version (version INTEGER NOT NULL, name VARCHAR NOT NULL, "
                "applied_at TIMESTAMP NOT NULL DEFAULT now())")
    con.execute(lake.without_keys(first[2]))
    con.execute("INSERT INTO schema_version (version, name) VALUES (1, 'init')")
    con.execute("INSERT INTO trajectories (trajectory_id, agent_id, task_id, family, status) "
                f"VALUES ('{TID}', 'a@1', 'm/1', 'modular', 'ok')")
    con.close()
    con = connect(url)
    assert schema_version(con) == migrations()[-1][0]
    assert con.execute("SELECT trajectory_id::VARCHAR, model FROM trajectories").fetchall() == [(TID, None)]
    con.close()


def test_without_keys_leaves_tables_and_columns():
    sql = migrations()[0][2]
    assert "PRIMARY KEY" in sql
    plain = lake.without_keys(sql)
    assert "PRIMARY KEY" not in plain
    mem = duckdb.connect()
    mem.execute(plain)
    keyed = duckdb.connect()
    keyed.execute(sql)
    columns = "SELECT table_name, column_name, data_type FROM information_schema.columns ORDER BY ALL"
    assert mem.execute(columns).fetchall() == keyed.execute(columns).fetchall()


def test_claims_one_worker_at_a_time_and_stale_ones_taken_over(lake_store, monkeypatch):
    a, b = connect(), connect()
    segment = [("ab" * 16, "01900000-0000-7000-8000-000000000001-seg-42.arrow")]
    assert lake.claim(a, segment, set()) == {"ab" * 16}
    monkeypatch.setattr(lake, "_HOLDER", "another-worker")
    refused = set()
    assert lake.claim(b, segment, refused) == set()
    assert refused == {"producer:seg-42"}
    # A later segment of that producer is left to the worker that holds it, even once it lets go.
    later = [("cd" * 16, "01900000-0000-7000-8000-000000000002-seg-42.arrow")]
    assert lake.claim(b, later, refused) == set()
    # A claim older than CLAIM_SECONDS is a dead worker's: taken over.
    monkeypatch.setattr(lake, "CLAIM_SECONDS", 0)
    time.sleep(0.01)
    assert lake.claim(b, segment, set()) == {"ab" * 16}
    a.close()
    b.close()


def test_an_unreachable_catalog_is_one_clear_error(postgres, home, monkeypatch):
    monkeypatch.setenv("GROKLOOP_STORE", "ducklake:postgres://grokloop@127.0.0.1:1/nowhere")
    with pytest.raises(StoreError, match="cannot reach the DuckLake catalog"):
        connect()
    monkeypatch.setenv("GROKLOOP_STORE", "ducklake:mysql://x")
    with pytest.raises(StoreError, match="unknown store"):
        connect()
    from flows.cli import app

    result = CliRunner().invoke(app, ["sql", "SELECT 1"])
    assert result.exit_code == 2 and "unknown store" in result.output


def test_training_records_land_in_the_lake(lake_store, home):
    from storage.runs import _apply_all, mark_stopped, record_evaluation, record_run, stored_metrics

    row = {"run_id": "r1", "name": "r1", "objective": "mdm", "dataset_id": None, "config": "{}",
           "status": "running", "parent_run_id": None, "t_mem": None, "t_grok": None,
           "grok_ratio": None, "grok_delay": None, "final_step": None}
    assert record_run(home, row, [(10, "train/loss", 2.0)], [(10, home / "ckpt")])
    assert mark_stopped(home, ["r1", "r2"]) == ["r1"]  # a cluster stop's mark (no r2 in the store)
    # A record made before the mark that lands after it (it waited as a file): later step, still stopped.
    with open_store(store_location(home)) as con:
        _apply_all(con, [{"run": {**row, "final_step": 15, "updated_at": "2000-01-01T00:00:00"}}])
    with open_store(store_location(home), read_only=True) as con:
        assert con.execute("SELECT status, final_step FROM runs").fetchall() == [("stopped", 15)]
    # The run's later records replace its status and a metric written again (MERGE: no key needed).
    assert record_run(home, {**row, "status": "finished", "final_step": 20},
                      [(10, "train/loss", 1.5), (20, "train/loss", 1.0)], final=True)
    assert record_evaluation(home, "r1", [{"run_id": "r1", "step": 20, "family": "modular", "split": "test_id",
                                           "n": 8, "accuracy": 0.5, "sampler": "{}"}])
    assert stored_metrics(home, "r1", 10) == {"train/loss": 1.5}
    con = connect(read_only=True)
    assert con.execute("SELECT status, final_step FROM runs").fetchall() == [("finished", 20)]
    assert con.execute("SELECT count(*) FROM metrics").fetchall() == [(2,)]
    assert con.execute("SELECT count(*) FROM checkpoints").fetchall() == [(1,)]
    assert con.execute("SELECT accuracy FROM evaluations").fetchall() == [(0.5,)]
    con.close()
