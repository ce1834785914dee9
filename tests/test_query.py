"""Read-only SQL: writes refused with a clear message; a writer's lock is waited for, then named."""

from __future__ import annotations

import subprocess
import sys
import textwrap
import time

import pytest
from typer.testing import CliRunner

from storage.query import run_sql
from storage.store import StoreError, connect

WRITES = [
    "INSERT INTO agents (agent_id, name, version) VALUES ('x@1', 'x', '1')",
    "UPDATE trajectories SET status = 'ok'",
    "DELETE FROM steps",
    "CREATE TABLE notes (a INTEGER)",
    "DROP TABLE steps",
    "COPY steps TO '{tmp}/steps.csv'",
    "ATTACH '{tmp}/other.duckdb' AS other",
]


@pytest.fixture
def store(home):
    con = connect()
    con.execute("INSERT INTO agents (agent_id, name, version) VALUES ('a@1', 'a', '1')")
    con.close()
    return home / "store.duckdb"


def test_select_returns_arrow(store):
    table = run_sql("SELECT agent_id, name FROM agents WHERE version = ?", ["1"])
    assert table.to_pylist() == [{"agent_id": "a@1", "name": "a"}]


@pytest.mark.parametrize("statement", WRITES)
def test_writes_are_refused_and_change_nothing(store, tmp_path, statement):
    with pytest.raises(StoreError, match="refused"):
        run_sql(statement.format(tmp=tmp_path))
    con = connect(store, read_only=True)
    assert con.execute("SELECT count(*) FROM agents").fetchall() == [(1,)]
    assert con.execute("SELECT count(*) FROM information_schema.tables WHERE table_name = 'steps'").fetchall() == [(1,)]
    con.close()
    assert not (tmp_path / "steps.csv").exists() and not (tmp_path / "other.duckdb").exists()


HOLD = textwrap.dedent("""
    import sys, time
    from storage.store import connect
    con = connect(sys.argv[1])
    print("LOCKED", flush=True)
    time.sleep(float(sys.argv[2]))
    con.close()
""")


def test_reader_waits_for_a_writer_then_names_the_lock(store):
    writer = subprocess.Popen([sys.executable, "-c", HOLD, str(store), "2.5"], stdout=subprocess.PIPE, text=True)
    try:
        assert writer.stdout.readline().strip() == "LOCKED"
        with pytest.raises(StoreError, match=rf"locked by PID {writer.pid} \(-c .*connect\(sys.argv\[1\]\).*writing to it"):
            run_sql("SELECT 1", timeout=0.3)
        start = time.monotonic()
        assert run_sql("SELECT count(*) AS n FROM agents", timeout=30).to_pylist() == [{"n": 1}]
        assert time.monotonic() - start > 0.5  # it waited for the writer rather than failing
    finally:
        writer.wait(timeout=30)


def test_cli_sql_formats(store, tmp_path):
    from flows.cli_store import app

    runner = CliRunner()
    out = runner.invoke(app, ["sql", "SELECT agent_id FROM agents", "--format", "csv"])
    assert out.exit_code == 0 and out.output.splitlines()[:2] == ['"agent_id"', '"a@1"']
    out = runner.invoke(app, ["sql", "SELECT agent_id FROM agents", "-f", "json"])
    assert out.output.strip() == '{"agent_id":"a@1"}'
    parquet = tmp_path / "a.parquet"
    out = runner.invoke(app, ["sql", "SELECT * FROM agents", "-f", "parquet", "-o", str(parquet)])
    import pyarrow.parquet as pq

    assert out.exit_code == 0 and pq.read_table(parquet).column("agent_id").to_pylist() == ["a@1"]
    # markdown, for a results page: values as the query wrote them, "|" escaped, NULL as a dash
    out = runner.invoke(app, ["sql", "SELECT agent_id, 12.345 AS x, 'a|b' AS y, NULL AS z FROM agents", "-f", "markdown"])
    assert out.exit_code == 0 and out.output.splitlines() == [
        "| agent_id | x | y | z |", "|---|---|---|---|", "| a@1 | 12.345 | a\\|b | — |"]
    out = runner.invoke(app, ["sql", "DROP TABLE agents"])
    assert out.exit_code == 2 and "refused" in out.output
    # a .sql file, comments first (as a query argument, "-- ..." would read as an option)
    query = tmp_path / "q.sql"
    query.write_text("-- the agents\nSELECT agent_id FROM agents;\n")
    out = runner.invoke(app, ["sql", "--file", str(query), "-f", "csv"])
    assert out.exit_code == 0 and out.output.splitlines()[:2] == ['"agent_id"', '"a@1"']
    for args, message in ((["sql"], "one of them"), (["sql", "SELECT 1", "--file", str(query)], "one of them"),
                          (["sql", "--file", str(tmp_path / "none.sql")], "no such file")):
        out = runner.invoke(app, args)
        assert out.exit_code == 2 and message in out.output, out.output


def test_a_query_where_there_is_no_store_says_so_and_creates_nothing(tmp_path, monkeypatch):
    from flows.cli_store import app

    missing = tmp_path / "not-a-home"
    monkeypatch.setenv("GROKLOOP_HOME", str(missing))
    out = CliRunner().invoke(app, ["sql", "SELECT 1"])
    assert out.exit_code != 0 and f"no store at {missing / 'store.duckdb'}" in out.output.replace("\n", "")
    out = CliRunner().invoke(app, ["status"])
    assert not missing.exists()  # reading leaves no empty home behind


def test_views_answer_the_common_questions(home):
    from agents.sdk import TrajectoryLogger
    from storage.ingest import ingest_spool

    log = TrajectoryLogger("solver", "2")
    for verified in (True, False, True):
        with log.trajectory({"family": "modular", "task_id": "m/1"}) as t:
            t.step(result=1)
            t.step(result=2, status="error")
            t.finish(verified=verified)
    log.trajectory({"family": "modular", "task_id": "m/2"}).step(result=1)  # never finished
    log.close()
    with connect() as con:
        ingest_spool(con)
    assert run_sql("SELECT trajectories, verified, success_rate, incomplete FROM success_rate").to_pylist() == [
        {"trajectories": 4, "verified": 2, "success_rate": 0.5, "incomplete": 1}]
    assert run_sql("SELECT steps, error_steps FROM step_counts").to_pylist() == [{"steps": 7, "error_steps": 3}]
    recent = run_sql("SELECT status, steps_stored FROM recent_trajectories").to_pylist()
    assert recent[0] == {"status": "incomplete", "steps_stored": 1} and len(recent) == 4
    assert run_sql("SELECT segments, steps, quarantined FROM ingest_summary").to_pylist() == [
        {"segments": 1, "steps": 7, "quarantined": 0}]


def test_a_reader_sees_this_versions_views_on_a_store_an_older_writer_left(store):
    # a long run started before an upgrade still writes with its old views.sql: here, one without
    # run_progress and with an older success_rate
    with connect() as con:
        con.execute("DROP VIEW run_progress")
        con.execute("CREATE OR REPLACE VIEW success_rate AS SELECT 'old' AS family")
    assert run_sql("SELECT count(*) AS runs FROM run_progress").to_pylist() == [{"runs": 0}]
    assert run_sql("SELECT * FROM success_rate").to_pylist() == []  # the current definition, no trajectories
    with connect(store, read_only=True) as con:  # and the stored views were left as they were
        stored = con.execute("SELECT view_name FROM duckdb_views() WHERE NOT temporary AND NOT internal"
                             " AND view_name = 'run_progress'").fetchall()
    assert stored == []


def test_cluster_grokking_places_each_clusters_grokking_and_how_much_of_it_held(home):
    from storage.runs import record_run

    connect().close()
    row = {"run_id": "r", "name": None, "objective": "mdm", "dataset_id": None, "config": '{"grok_threshold": 0.9}',
           "status": "finished", "parent_run_id": None, "t_mem": None, "t_grok": None, "grok_ratio": None,
           "grok_delay": None, "final_step": 500}
    curves = {"x/y": [0.1, 0.92, 0.4, 0.95, 0.5],   # at the run's threshold 0.9 from step 200, down, back, down
              "x+y": [0.95, 0.85, 0.93, 0.99],     # not measured at step 500
              "x-y": [0.02, 0.03, 0.05, 0.04, 0.03]}  # never
    metrics = [(100 * (i + 1), f"test_id/cluster:{name}/acc", acc) for name, curve in curves.items()
               for i, acc in enumerate(curve)] + [(100, "test_id/acc", 0.5)]
    assert record_run(home, row, metrics, final=True)
    got = run_sql("SELECT cluster, groks_at, held_from, kept, lowest_after, best, final_acc, evals, others_groks_at, "
                  "others_held_from, others_kept, others_lowest_after FROM cluster_grokking")
    assert got.to_pylist() == [
        # x-y's others (x/y and x+y, their lowest where both were measured): 0.1, 0.85, 0.4, 0.95 -- at 0.9
        # first at step 400, where neither was first; step 500 (x+y unmeasured) is not a point of it
        {"cluster": "x+y", "groks_at": 100, "held_from": 300, "kept": 0.75, "lowest_after": 0.85, "best": 0.99,
         "final_acc": 0.99, "evals": 4, "others_groks_at": None, "others_held_from": None, "others_kept": None,
         "others_lowest_after": None},
        {"cluster": "x-y", "groks_at": None, "held_from": None, "kept": None, "lowest_after": None, "best": 0.05,
         "final_acc": 0.03, "evals": 5, "others_groks_at": 400, "others_held_from": 400, "others_kept": 1.0,
         "others_lowest_after": 0.95},
        # ends below its threshold: grokked at 200 by the first crossing, held from nowhere
        {"cluster": "x/y", "groks_at": 200, "held_from": None, "kept": 0.5, "lowest_after": 0.4, "best": 0.95,
         "final_acc": 0.5, "evals": 5, "others_groks_at": None, "others_held_from": None, "others_kept": None,
         "others_lowest_after": None}]
    got = run_sql("SELECT step, acc, others_acc FROM cluster_curves WHERE cluster = 'x-y'")
    assert got.to_pylist() == [{"step": 100 * (i + 1), "acc": acc, "others_acc": others} for i, (acc, others) in
                               enumerate(zip(curves["x-y"], [0.1, 0.85, 0.4, 0.95, None], strict=True))]


def test_run_progress_says_whether_a_runs_first_crossing_of_the_grok_threshold_held(home):
    """T_grok is the first evaluation at the threshold; one evaluation of a plateau just under it can set
    it. `t_grok_held` is where test ID accuracy last came back to the threshold and stayed; `kept` the
    share of evaluations from T_grok on at it."""
    from storage.runs import record_run

    connect().close()
    ids = {"scatter": [0.5, 0.96, 0.93, 0.94, 0.92],   # one evaluation at 0.95, then back under it
           "grokked": [0.5, 0.96, 0.90, 0.97, 0.98],   # a dip after T_grok, then there to the end
           "never": [0.1, 0.2, 0.3, 0.4, 0.5]}
    for run_id, curve in ids.items():
        row = {"run_id": run_id, "name": None, "objective": "ar", "dataset_id": None, "config": "{}",
               "status": "finished", "parent_run_id": None, "t_mem": 100, "t_grok": 200 if max(curve) > 0.95 else None,
               "grok_ratio": None, "grok_delay": None, "final_step": 500}
        metrics = [(100 * (i + 1), "test_id/acc", acc) for i, acc in enumerate(curve)]
        metrics += [(100 * (i + 1), "test_id/cluster:x+y/acc", acc) for i, acc in enumerate(curve)]
        assert record_run(home, row, metrics, final=True)
    got = run_sql("SELECT run_id, step, t_grok, t_grok_held, kept, test_id_acc FROM run_progress ORDER BY run_id")
    assert got.to_pylist() == [
        {"run_id": "grokked", "step": 500, "t_grok": 200, "t_grok_held": 400, "kept": 0.75, "test_id_acc": 0.98},
        {"run_id": "never", "step": 500, "t_grok": None, "t_grok_held": None, "kept": None, "test_id_acc": 0.5},
        {"run_id": "scatter", "step": 500, "t_grok": 200, "t_grok_held": None, "kept": 0.25, "test_id_acc": 0.92}]
    # the same marks on every curve `curve_grokking` reads: here each run's one cluster follows its test ID
    marks = run_sql("SELECT run_id, curve, groks_at, held_from, kept FROM curve_grokking ORDER BY run_id, curve")
    assert [(r["groks_at"], r["held_from"], r["kept"]) for r in marks.to_pylist()] == \
        [(200, 400, 0.75)] * 2 + [(None, None, None)] * 2 + [(200, None, 0.25)] * 2
