"""Issue 14, failure 4: readers never kill writers, and writers never lose work to readers.

A reader holds the store open (a researcher's long query) across a training run and an ingest,
with shortened timeouts: training's writes wait as files in its run directory and land with its
final write; ingest waits (--timeout) and then lands everything; a lock message names the holder."""

from __future__ import annotations

import subprocess
import sys
import textwrap
import time

import duckdb

import diffusion.records
import storage.runs
from agents.sdk import TrajectoryLogger
from diffusion.train import TrainConfig, train
from storage.home import runs_dir, spool_dir, store_path
from storage.runs import flush_pending, record_run
from storage.store import connect

READER = textwrap.dedent("""
    import pathlib, sys, time
    from storage.store import connect
    con = connect(sys.argv[1], read_only=True)
    con.execute("SELECT count(*) FROM trajectories").fetchall()
    print("READING", flush=True)
    release = pathlib.Path(sys.argv[2])
    deadline = time.monotonic() + 120
    while not release.exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    con.close()
""")


def start_reader(home):
    release = home / "release-reader"
    reader = subprocess.Popen([sys.executable, "-c", READER, str(store_path(home)), str(release)],
                              stdout=subprocess.PIPE, text=True)
    assert reader.stdout.readline().strip() == "READING"
    return reader, release


def query(home, sql, params=()):
    con = duckdb.connect(str(store_path(home)), read_only=True)
    try:
        return con.execute(sql, list(params)).fetchall()
    finally:
        con.close()


def test_a_reader_held_across_a_training_run_neither_fails_it_nor_loses_its_metrics(home, monkeypatch):
    connect(store_path(home)).close()
    monkeypatch.setattr(storage.runs, "WRITE_TIMEOUT", 0.2)
    monkeypatch.setattr(storage.runs, "FINAL_TIMEOUT", 60.0)
    reader, release = start_reader(home)
    waited = []

    def record_then_release(home_, row, metrics=(), checkpoints=(), *, final=False):
        if final:
            release.touch()  # the reader finishes while the run's last write waits for it
        landed = record_run(home_, row, metrics, checkpoints, final=final)
        waited.append(not landed)
        return landed

    monkeypatch.setattr(diffusion.records, "record_run", record_then_release)
    cfg = TrainConfig(family="modular", family_params={"p": 5, "train_fraction": 0.6, "seed": 0},
                      hidden_size=32, num_layers=1, num_heads=2, batch_size=8, max_steps=40, eval_every=10,
                      sampler_steps=1, home=str(home), run_name="busy", progress=False)
    result = train(cfg)
    reader.wait(timeout=60)

    assert result.status == "finished"
    assert waited[:-1] and all(waited[:-1]) and waited[-1] is False  # waited as files, then landed
    assert query(home, "SELECT status, final_step FROM runs WHERE run_id = ?", [result.run_id]) == [("finished", 40)]
    steps = query(home, "SELECT DISTINCT step FROM metrics WHERE run_id = ? ORDER BY step", [result.run_id])
    assert [s for (s,) in steps] == [0, 10, 20, 30, 40]
    assert not list((runs_dir(home) / result.run_id).glob("pending/*"))


def test_records_that_waited_reach_the_store_at_ingest_and_never_replace_newer_ones(home, monkeypatch):
    connect(store_path(home)).close()
    monkeypatch.setattr(storage.runs, "WRITE_TIMEOUT", 0.2)
    row = {"run_id": "r1", "name": None, "objective": "mdm", "dataset_id": None, "config": "{}",
           "status": "running", "parent_run_id": None, "t_mem": None, "t_grok": None, "grok_ratio": None,
           "grok_delay": None, "final_step": 10}
    reader, release = start_reader(home)
    assert record_run(home, row, [(10, "train/acc", 0.5)]) is False  # the store is busy
    release.touch()
    reader.wait(timeout=60)
    status = subprocess.run([sys.executable, "-m", "flows.cli", "status"], capture_output=True, text=True,
                            timeout=120)
    assert "1 training record(s) wait" in status.stdout.replace("\n", " ")
    result = subprocess.run([sys.executable, "-m", "flows.cli", "ingest"], capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 0, result.stderr
    assert query(home, "SELECT status FROM runs") == [("running",)]
    assert query(home, "SELECT step, name, value FROM metrics") == [(10, "train/acc", 0.5)]
    assert not list((runs_dir(home) / "r1" / "pending").iterdir())

    # A record that waited longer than a newer one that landed never replaces it.
    assert record_run(home, {**row, "status": "finished", "final_step": 20}, [(20, "train/acc", 1.0)])
    storage.runs._save_pending(runs_dir(home) / "r1", {
        "run": {**row, "updated_at": "2000-01-01T00:00:00"}, "metrics": [], "checkpoints": []})
    with connect(store_path(home)) as con:
        assert flush_pending(con, home) == 1
    assert query(home, "SELECT status, final_step FROM runs") == [("finished", 20)]


def test_a_reader_held_across_an_ingest_makes_it_wait_not_fail(home):
    log = TrajectoryLogger("a", "1", spool=spool_dir(home))
    for i in range(20):
        with log.trajectory({"family": "modular", "task_id": f"m/{i}"}) as t:
            for k in range(5):
                t.step(tool_name="add", result=k)
            t.finish(answer=[i], verified=True)
        log.flush()
    log.close()
    connect(store_path(home)).close()
    reader, release = start_reader(home)

    # too short a wait: one line naming the reader, and nothing lost from the spool
    short = subprocess.run([sys.executable, "-m", "flows.cli", "ingest", "--timeout", "0.5"],
                           capture_output=True, text=True, timeout=120)
    assert short.returncode == 2
    assert f"locked by PID {reader.pid}" in short.stderr and "stays in the spool" in short.stderr
    assert len(short.stderr.strip().splitlines()) == 1

    waiting = subprocess.Popen([sys.executable, "-m", "flows.cli", "ingest", "--timeout", "60"],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    time.sleep(2.0)
    release.touch()
    out, err = waiting.communicate(timeout=120)
    reader.wait(timeout=60)
    assert waiting.returncode == 0, err
    assert query(home, "SELECT count(*), count(*) FILTER (WHERE status = 'ok') FROM trajectories") == [(20, 20)]
    assert query(home, "SELECT count(*) FROM steps") == [(100,)]
