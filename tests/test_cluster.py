"""Agents and sweeps on a real Dask cluster (a scheduler and 2 worker processes, started here), the
spool on a real S3-compatible server (moto's, on 127.0.0.1, as s3fs tests itself). Both start once
for this module: a few seconds."""

from __future__ import annotations

import dataclasses
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path

import duckdb
import pytest
import torch

from diffusion.train import TrainConfig
from flows import steps
from flows.config import LoopConfig
from flows.experiments.common import train_runs, train_sweep
from flows.flows import collect_flow
from flows.runners import Runner
from storage import shared
from storage.home import store_path
from storage.spool import published_segments, read_records

pytestmark = pytest.mark.usefixtures("prefect_server")

MODULAR = {"p": 7, "operations": ["x+y"], "train_fraction": 0.6}
BUCKET = "grokloop-test"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def s3():
    """moto's S3 server on 127.0.0.1, and the AWS settings s3fs (here and in the Dask workers,
    which start after this and inherit the environment) reads to reach it."""
    from moto.server import ThreadedMotoServer

    port = _free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port)
    server.start()
    with pytest.MonkeyPatch.context() as mp:
        for key, value in {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
                           "AWS_DEFAULT_REGION": "us-east-1",
                           "AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}"}.items():
            mp.setenv(key, value)
        import s3fs

        s3fs.S3FileSystem.clear_instance_cache()
        s3fs.S3FileSystem().mkdir(BUCKET)
        yield f"s3://{BUCKET}"
        s3fs.S3FileSystem.clear_instance_cache()
    server.stop()


@pytest.fixture(scope="module")
def cluster(s3):
    """A Dask scheduler and 2 worker processes, one thread each; yields the client."""
    from distributed import Client

    from flows.runners import local_cluster

    environ = dict(os.environ)  # distributed sets OMP_NUM_THREADS=1 in this process's environment
    try:
        with local_cluster(n_workers=2, threads_per_worker=1, dashboard_address=None) as lc, \
                Client(lc) as client:
            client.wait_for_workers(2)
            yield client
    finally:  # ...which later tests' subprocesses would inherit (a trainer on fewer threads)
        os.environ.clear()
        os.environ.update(environ)


def _runner(client) -> Runner:
    return Runner("dask", client.scheduler.address)


def _stored_trajectories(home) -> list[tuple]:
    with duckdb.connect(str(store_path(home)), read_only=True) as con:
        return con.execute(
            "SELECT trajectory_id::VARCHAR, agent_id, task_id, status, verified, n_steps,"
            " array_to_string(tags, ',') FROM trajectories"
        ).fetchall()


def test_collect_across_two_workers_with_the_spool_on_s3_ingests_exactly_what_the_agents_logged(
        cluster, s3, tmp_path):
    spool = f"{s3}/collect/spool"
    cfg = LoopConfig(home=str(tmp_path / "dask"), spool=spool, families=["modular"],
                     family_params={"modular": MODULAR}, n_agents=2, episodes=30, policy="mixed",
                     runner="dask", dask_address=cluster.scheduler.address)
    result = collect_flow(cfg=cfg)

    report = result["collected"]["modular"]
    assert report["trajectories"] == 60 and report["n_agents"] == 2
    assert result["ingested"]["trajectories"] == 60
    # Every segment moved to ingested/ on S3, none left; each from one of the two worker processes.
    assert published_segments(spool) == []
    ingested = published_segments(f"{spool}/ingested")
    assert len(ingested) == report["segments"]
    worker_pids = set(cluster.run(os.getpid).values())
    assert {int(url.rsplit("-", 1)[1].split(".")[0]) for url in ingested} == worker_pids
    logged = {r["trajectory_id"] for url in ingested for r in read_records(url) if r["type"] == "trajectory"}
    stored = _stored_trajectories(cfg.home)
    assert len(stored) == 60 and {row[0] for row in stored} == logged

    # Ingesting the same spool again adds nothing (segments are known by content digest).
    again = steps.ingest(cfg)
    assert again["trajectories"] == 0 and len(_stored_trajectories(cfg.home)) == 60

    # The same collect made locally (agent processes here, local spool) logs the same episodes.
    local = LoopConfig(home=str(tmp_path / "local"), families=["modular"], family_params={"modular": MODULAR},
                       n_agents=2, episodes=30, policy="mixed")
    collect_flow(cfg=local)
    assert Counter(r[1:] for r in _stored_trajectories(local.home)) == Counter(r[1:] for r in stored)


def tiny(home, run_name: str, **kw) -> TrainConfig:
    base = dict(family="modular", family_params={"p": 5, "train_fraction": 0.6, "seed": 0}, hidden_size=32,
                num_layers=1, num_heads=2, lr=3e-3, weight_decay=0.0, batch_size=8, max_steps=40,
                eval_every=20, sampler_steps=1, grokfast="ema", home=str(home), run_name=run_name,
                progress=False)
    return TrainConfig(**{**base, **kw})


def _runs(home) -> tuple[list[tuple], list[tuple]]:
    """Every run's (run_id, status, final_step, t_mem, t_grok) and metrics but wall-clock time."""
    with duckdb.connect(str(store_path(home)), read_only=True) as con:
        runs = con.execute("SELECT run_id, status, final_step, t_mem, t_grok FROM runs ORDER BY run_id").fetchall()
        metrics = con.execute("SELECT run_id, step, name, value FROM metrics WHERE name <> 'step_time'"
                              " ORDER BY ALL").fetchall()
    return runs, metrics


@pytest.fixture
def one_thread():
    """The local runs on one torch thread, as each Dask worker (distributed sets OMP_NUM_THREADS=1)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def test_a_four_run_sweep_across_the_workers_records_the_runs_the_local_sweep_does(cluster, tmp_path, one_thread):
    def sweep(home, runner):  # as an experiment runs it: one task per setting (train_seeds: its 2 seeds)
        groups = [[tiny(home, f"sweep-s{seed}-{opt}", seed=seed, grokfast=opt) for seed in (0, 1)]
                  for opt in ("ema", "none")]
        return [dataclasses.asdict(r) for results in train_sweep(groups, runner) for r in results]

    on_cluster = sweep(tmp_path / "dask", _runner(cluster))
    here = sweep(tmp_path / "local", Runner())
    assert [r["run_id"] for r in on_cluster] == [r["run_id"] for r in here]
    runs, metrics = _runs(tmp_path / "dask")
    assert len(runs) == 4 and {r[1:3] for r in runs} == {("finished", 40)}
    assert len({r[0] for r in metrics}) == 4 and len(metrics) >= 4 * 3 * 5
    assert (runs, metrics) == _runs(tmp_path / "local")
    def final(results):  # the last evaluation each run reports, but its wall-clock step time
        return [{k: v for k, v in r["metrics"].items() if k != "step_time"} for r in results]

    assert final(on_cluster) == final(here)


@pytest.mark.parametrize("home", ["shared dir", "runs on S3"])
def test_a_run_whose_worker_dies_resumes_on_the_other_from_its_checkpoint(cluster, s3, tmp_path, one_thread, home):
    """The run's checkpoints on the (local, shared) home, or only on S3 (shared_home): there the
    worker that takes the run over has nothing of it but what S3 holds."""
    shared_home = f"{s3}/{tmp_path.name}" if home == "runs on S3" else None
    cfg = tiny(tmp_path / "dask", "mover", max_steps=240, eval_every=20, keep_checkpoints=100,
               shared_home=shared_home)
    run_dir = tmp_path / "dask" / "runs" / "mover"
    where = f"{shared_home}/runs/mover" if shared_home else run_dir
    latest = ((lambda: (shared.read_bytes(f"{where}/latest") or b"").decode()) if shared_home else
              (lambda: (run_dir / "latest").read_text() if (run_dir / "latest").is_file() else ""))

    def written(step: int):  # when the checkpoint of `step` was written
        if shared_home:
            import s3fs

            return s3fs.S3FileSystem().info(f"{where}/checkpoints/step_{step}/state.pt".removeprefix("s3://"),
                                            refresh=True)["LastModified"]
        return (run_dir / "checkpoints" / f"step_{step}").stat().st_mtime_ns

    pids = cluster.run(os.getpid)
    outcome: dict = {}
    sweep = threading.Thread(target=lambda: outcome.update(result=train_runs([cfg], _runner(cluster))))
    sweep.start()
    deadline = time.monotonic() + 120
    while latest() in ("", "step_0", "step_20"):
        assert time.monotonic() < deadline and sweep.is_alive(), "no checkpoint appeared"
        time.sleep(0.01)
    busy = [w for w, tasks in cluster.processing().items() if tasks]
    assert len(busy) == 1
    os.kill(pids[busy[0]], signal.SIGKILL)
    killed_at = int(latest().split("_")[1])
    before = written(killed_at)
    sweep.join(timeout=240)
    assert not sweep.is_alive()
    result = outcome["result"][0]
    assert result["status"] == "finished" and result["final_step"] == 240
    assert 0 < killed_at < 240
    assert written(killed_at) == before  # resumed from it, not rewritten by a restart
    if shared_home:  # nothing of the checkpoints on the local home: the other worker read S3
        assert not (run_dir / "checkpoints").exists() and not (run_dir / "latest").exists()
        assert str(result["checkpoint_dir"]) == f"{where}/checkpoints/step_240"

    train_runs([tiny(tmp_path / "ref", "mover", max_steps=240, eval_every=20)], Runner())
    assert _runs(tmp_path / "dask") == _runs(tmp_path / "ref")


def test_a_dask_experiment_stopped_by_sigterm_leaves_no_process_and_the_same_command_continues_it(tmp_path):
    """The CLI as a user runs it: no PREFECT_API_URL (Prefect's ephemeral server), a local cluster of 2
    worker processes. One Prefect server serves the CLI and its workers; SIGTERM ends the CLI (143) and
    every process it started; the same command then continues each run from its checkpoint to the cap."""
    import psutil

    CAP = 2000  # noqa: N806 -- far past the first checkpoint: a quick run does 300 steps before SIGTERM lands
    env = {k: v for k, v in os.environ.items() if k != "PREFECT_API_URL"}
    env.update(GROKLOOP_HOME=str(tmp_path), OMP_NUM_THREADS="1", PYTHONPATH=str(Path(__file__).parents[1]))
    command = [sys.executable, "-m", "flows.cli", "experiment", "composition", "--quick", "--worlds", "two_hop",
               "--arms", "ar", "--seeds", "2", "--max-steps", str(CAP), "--runner", "dask", "--dask-workers", "2",
               "--out", str(tmp_path / "out")]
    runs = tmp_path / "runs"

    def latest_steps() -> dict[str, int]:
        return {p.parent.name: int(p.read_text().split("_")[1]) for p in runs.glob("*/latest")}

    proc = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 600
    while not any(latest_steps().values()):  # a checkpoint past step 0: the runs are training
        assert proc.poll() is None, proc.stderr.read().decode()[-3000:]
        assert time.monotonic() < deadline, "no checkpoint appeared"
        time.sleep(0.2)
    started = psutil.Process(proc.pid).children(recursive=True)
    servers = [p for p in started if "prefect.server.api.server:create_app" in " ".join(p.cmdline())]
    assert len(servers) == 1 and servers[0].ppid() == proc.pid  # the CLI's; none in the workers

    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=120) == 128 + signal.SIGTERM
    _, alive = psutil.wait_procs(started, timeout=60)
    assert not alive, [p.cmdline() for p in alive]
    stopped_at = latest_steps()
    assert len(stopped_at) == 2 and all(step < CAP for step in stopped_at.values()), stopped_at
    with duckdb.connect(str(store_path(tmp_path)), read_only=True) as con:
        before = con.execute("SELECT run_id, step, name, value FROM metrics ORDER BY ALL").fetchall()
        # the killed workers could not say so; the CLI did, for each run at the last step recorded
        stopped = con.execute("SELECT run_id, status, final_step = (SELECT max(step) FROM metrics m "
                              "WHERE m.run_id = runs.run_id) FROM runs ORDER BY run_id").fetchall()
    assert stopped == [(r, "stopped", True) for r in sorted(stopped_at)]

    subprocess.run(command, env=env, check=True, capture_output=True, timeout=900)
    with duckdb.connect(str(store_path(tmp_path)), read_only=True) as con:
        finished = con.execute("SELECT run_id, status, final_step FROM runs ORDER BY run_id").fetchall()
        after = con.execute("SELECT run_id, step, name, value FROM metrics ORDER BY ALL").fetchall()
    assert [(r, s, n) for r, s, n in finished] == [(r, "finished", CAP) for r in sorted(stopped_at)]
    # Continued, not restarted: the first process's rows before its checkpoint are all still there,
    # wall-clock step times included (a restart rewrites them), and the rows after it are new.
    first = {row for row in before if row[1] < stopped_at[row[0]]}
    assert first and first <= set(after) and len(after) > len(before)


def test_a_step_written_again_on_s3_is_read_anew_not_from_the_local_copy_of_the_earlier_one(s3, tmp_path,
                                                                                              one_thread, monkeypatch):
    """S3's checksum is the object's content hash. A run's prefix emptied and the run trained again by
    other code (as a later test session reusing a bucket path did): its step_20 must not be read from
    this machine's copy of the earlier step_20. grokloop.json, which keys the copy, says when it was saved."""
    from diffusion import train as train_module
    from diffusion.checkpoint import local_checkpoint

    cfg = tiny(tmp_path / "here", "again", max_steps=20, shared_home=f"{s3}/{tmp_path.name}")
    train_module.train(cfg)
    run_url = f"{cfg.shared_home}/runs/again"
    step_20 = f"{run_url}/checkpoints/step_20"
    earlier = local_checkpoint(step_20)
    earlier_state = (earlier / "state.pt").read_bytes()
    shared.remove(run_url)

    initial_model = train_module.initial_model

    def other_code(*args, **kw):  # the same config, other weights
        model = initial_model(*args, **kw)
        with torch.no_grad():
            for p in model.parameters():
                p.add_(1.0)
        return model

    monkeypatch.setattr(train_module, "initial_model", other_code)
    train_module.train(dataclasses.replace(cfg, home=str(tmp_path / "elsewhere")))  # the same run, other machine
    now = local_checkpoint(step_20)
    assert shared.read_bytes(f"{step_20}/state.pt") != earlier_state
    for name in shared.children(step_20):
        assert (now / name).read_bytes() == shared.read_bytes(f"{step_20}/{name}"), name


def test_a_sweep_on_a_local_ray_records_the_runs_the_local_sweep_does(tmp_path, one_thread, capfd):
    """runner=ray: a Ray instance started for the sweep (2 CPUs, so both runs at once, each in a Ray
    worker process), through prefect-ray; the same runs as made here, one after the other. Each
    run's eval lines reach this process's output (Ray forwards its workers')."""
    import ray

    def sweep(home, runner):
        cfgs = [tiny(home, f"ray-s{seed}", seed=seed) for seed in (0, 1)]
        return train_runs(cfgs, runner)

    capfd.readouterr()
    on_ray = sweep(tmp_path / "ray", Runner("ray", n_workers=2))
    assert not ray.is_initialized()  # the runner stopped the Ray it started
    printed = "".join(capfd.readouterr())
    here = sweep(tmp_path / "local", Runner())
    runs, metrics = _runs(tmp_path / "ray")
    for run_id, *_ in runs:
        evaluated = [step for r, step, name, _ in metrics if r == run_id and name == "test_id/acc"]
        assert printed.count(f"{run_id} step ") == len(evaluated) > 1, (run_id, printed[-2000:])
    assert [r["status"] for r in on_ray] == ["finished", "finished"]
    assert len(runs) == 2 and len({r[0] for r in metrics}) == 2
    assert (runs, metrics) == _runs(tmp_path / "local")
    assert [{k: v for k, v in r["metrics"].items() if k != "step_time"} for r in on_ray] == \
        [{k: v for k, v in r["metrics"].items() if k != "step_time"} for r in here]
