"""Agents and sweeps on a Dask cluster of this machine: 1 vs 2 worker processes, and the S3 spool's
and S3 home's cost against the local ones for the same collect and sweep.

    OMP_NUM_THREADS=1 .venv/bin/python bench/cluster.py                      # defaults below
    OMP_NUM_THREADS=1 .venv/bin/python bench/cluster.py --shards 4 --episodes 2000 --runs 4 --steps 200

Each figure is measured in this one run, side by side:
- agent trajectories/s: a `collect` of `--shards` agent shards (one task each) on a local Dask
  cluster of 1, then 2 worker processes; the time of the fan-out (agents logging to the spool),
  start of the cluster excluded, and of the ingest after it.
- sweep runs/hour: `--runs` small training runs (one task each) on 1, then 2 workers.
- S3 spool: the same collect with the spool on moto's S3 server (127.0.0.1) against a local
  spool: agents' time and ingest time. moto is an in-process stand-in, not AWS: the figure is
  the cost of going through s3fs and HTTP per segment, not of a real network.
- S3 home: the same sweep (2 workers) with shared_home on that server, so every checkpoint
  (one per evaluation) is uploaded there instead of written to the run directory.
- one run in a worker: a grokfast-size run (a*b mod 97, batch 512, `--worker-steps` steps) in this
  process, in a worker of `flows.runners.local_cluster` (the runner's), and in a worker of Dask's
  own LocalCluster, whose nanny sets MALLOC_TRIM_THRESHOLD_ (glibc then maps and unmaps a step's
  large buffers on every step).
The ratios cannot exceed the free cores (printed, with the load average): on a shared machine,
read them with the load beside them.
"""

from __future__ import annotations

import argparse
import os
import socket
import tempfile
import time
from pathlib import Path

from rich.console import Console
from rich.table import Table

MODULAR = {"p": 23, "operations": ["x+y", "x*y"], "train_fraction": 0.6}


def _cluster(n_workers: int):
    from flows.runners import local_cluster

    return local_cluster(n_workers=n_workers, threads_per_worker=1, dashboard_address=None)


def collect(address: str, home: Path, spool: str | None, shards: int, episodes: int) -> dict:
    """One collect on the cluster at `address`: (agents' seconds, ingest seconds, trajectories)."""
    from flows import steps
    from flows.config import LoopConfig
    from flows.flows import collect_shard_task
    from flows.runners import Runner, fan_out

    cfg = LoopConfig(home=str(home), spool=spool, families=["modular"], family_params={"modular": MODULAR},
                     n_agents=shards, episodes=episodes, policy="mixed", runner="dask", dask_address=address)
    start = time.perf_counter()
    reports = fan_out(Runner("dask", address), collect_shard_task,
                      [(cfg, "modular", i) for i in range(shards)])
    agents = time.perf_counter() - start
    start = time.perf_counter()
    ingested = steps.ingest(cfg)
    ingest = time.perf_counter() - start
    logged = sum(r["trajectories"] for r in reports)
    assert ingested["trajectories"] == logged, (ingested, logged)
    return {"agents_s": agents, "ingest_s": ingest, "trajectories": logged}


def sweep(address: str, home: Path, runs: int, steps_: int, shared_home: str | None = None) -> float:
    """Seconds for `runs` small training runs on the cluster at `address` (checkpoints on
    `shared_home` when given)."""
    from diffusion.train import TrainConfig
    from flows.experiments.common import train_runs
    from flows.runners import Runner

    cfgs = [TrainConfig(family="modular", family_params={"p": 11, "train_fraction": 0.6, "seed": 0},
                        hidden_size=64, num_layers=2, num_heads=4, batch_size=64, max_steps=steps_,
                        eval_every=max(steps_ // 2, 1), sampler_steps=1, seed=seed, home=str(home),
                        run_name=f"bench-{seed}", progress=False, shared_home=shared_home)
            for seed in range(runs)]
    start = time.perf_counter()
    results = train_runs(cfgs, Runner("dask", address))
    assert all(r["status"] == "finished" for r in results)
    return time.perf_counter() - start


def one_run(home: Path, steps_: int, address: str | None) -> float:
    """Seconds for one grokfast-size run of `steps_` steps: in this process, or on the cluster at `address`."""
    from diffusion.train import TrainConfig, train
    from flows.experiments.common import train_runs
    from flows.runners import Runner

    cfg = TrainConfig(family="modular", family_params={"p": 97, "operations": ["x*y"], "train_fraction": 0.5,
                                                       "seed": 0},
                      batch_size=512, max_steps=steps_, eval_every=steps_, home=str(home), run_name="one",
                      progress=False)
    start = time.perf_counter()
    if address is None:
        train(cfg)
    else:
        train_runs([cfg], Runner("dask", address))
    return time.perf_counter() - start


def worker_speed(tmp: Path, steps_: int) -> dict[str, float]:
    """`one_run` here, in a local_cluster worker and in a worker of Dask's own LocalCluster."""
    from distributed import LocalCluster

    seconds = {"this process": one_run(tmp / "here", steps_, None)}
    with _cluster(1) as cluster:
        one_run(tmp / "warm-ours", 2, cluster.scheduler_address)
        seconds["local_cluster worker"] = one_run(tmp / "ours", steps_, cluster.scheduler_address)
    environ = dict(os.environ)  # its nanny writes MALLOC_TRIM_THRESHOLD_ into this process's environment
    with LocalCluster(n_workers=1, processes=True, threads_per_worker=1, dashboard_address=None) as cluster:
        one_run(tmp / "warm-dask", 2, cluster.scheduler_address)
        seconds["Dask's LocalCluster worker"] = one_run(tmp / "dask", steps_, cluster.scheduler_address)
    os.environ.clear()
    os.environ.update(environ)
    return seconds


def _moto():
    from moto.server import ThreadedMotoServer

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port)
    server.start()
    os.environ.update({"AWS_ACCESS_KEY_ID": "bench", "AWS_SECRET_ACCESS_KEY": "bench",
                       "AWS_DEFAULT_REGION": "us-east-1", "AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}"})
    import s3fs

    s3fs.S3FileSystem().mkdir("grokloop-bench")
    return server


def main() -> None:
    from prefect.testing.utilities import prefect_test_harness

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shards", type=int, default=4, help="agent shards (tasks) per collect")
    ap.add_argument("--episodes", type=int, default=1000, help="episodes per shard")
    ap.add_argument("--runs", type=int, default=4, help="training runs per sweep")
    ap.add_argument("--steps", type=int, default=200, help="steps per training run")
    ap.add_argument("--worker-steps", type=int, default=300, help="steps of the one run in a worker")
    ap.add_argument("--only-worker", action="store_true", help="measure the one run in a worker alone")
    args = ap.parse_args()
    cores = len(os.sched_getaffinity(0))
    console = Console(width=140)
    console.print(f"{cores} cores visible, load average {os.getloadavg()[0]:.1f}")
    if args.only_worker:
        with prefect_test_harness(server_startup_timeout=120), tempfile.TemporaryDirectory() as tmp:
            _print_worker_speed(console, worker_speed(Path(tmp), args.worker_steps), args.worker_steps)
        return
    server = _moto()  # before the clusters start: their workers inherit the S3 settings
    rows = {}
    with prefect_test_harness(server_startup_timeout=120), tempfile.TemporaryDirectory() as tmp:
        speed = worker_speed(Path(tmp), args.worker_steps)
        for n in (1, 2):
            with _cluster(n) as cluster:
                address = cluster.scheduler_address
                collect(address, Path(tmp) / f"warm{n}", None, n, 10)  # imports on every worker
                sweep(address, Path(tmp) / f"warm-sweep{n}", n, 2)
                rows[f"local spool, {n} worker(s)"] = collect(address, Path(tmp) / f"c{n}", None,
                                                              args.shards, args.episodes)
                if n == 2:
                    rows["S3 spool, 2 worker(s)"] = collect(address, Path(tmp) / "s3", "s3://grokloop-bench/spool",
                                                            args.shards, args.episodes)
                rows[f"sweep {n}"] = {"seconds": sweep(address, Path(tmp) / f"s{n}", args.runs, args.steps)}
                if n == 2:
                    rows["sweep S3"] = {"seconds": sweep(address, Path(tmp) / "s3-sweep", args.runs, args.steps,
                                                         shared_home="s3://grokloop-bench/home")}
    server.stop()

    table = Table(title=f"collect: {args.shards} shards x {args.episodes} episodes (modular, mixed)")
    for col in ("spool, workers", "agents s", "traj/s", "vs 1 worker", "ingest s", "ingest traj/s"):
        table.add_column(col, justify="right")
    base = rows["local spool, 1 worker(s)"]
    for name in ("local spool, 1 worker(s)", "local spool, 2 worker(s)", "S3 spool, 2 worker(s)"):
        r = rows[name]
        table.add_row(name, f"{r['agents_s']:.2f}", f"{r['trajectories'] / r['agents_s']:.0f}",
                      f"{base['agents_s'] / r['agents_s']:.2f}x", f"{r['ingest_s']:.2f}",
                      f"{r['trajectories'] / r['ingest_s']:.0f}")
    console.print(table)
    local2, s3 = rows["local spool, 2 worker(s)"], rows["S3 spool, 2 worker(s)"]
    console.print(f"S3 spool / local spool (2 workers): agents {s3['agents_s'] / local2['agents_s']:.2f}x the time, "
                  f"ingest {s3['ingest_s'] / local2['ingest_s']:.2f}x the time")
    one, two = rows["sweep 1"]["seconds"], rows["sweep 2"]["seconds"]
    console.print(f"sweep of {args.runs} runs x {args.steps} steps: 1 worker {one:.1f} s ({3600 * args.runs / one:.0f} "
                  f"runs/hour), 2 workers {two:.1f} s ({3600 * args.runs / two:.0f} runs/hour), ratio {one / two:.2f}x")
    s3_home = rows["sweep S3"]["seconds"]
    console.print(f"same sweep, 2 workers, checkpoints on S3 (shared_home): {s3_home:.1f} s "
                  f"({3600 * args.runs / s3_home:.0f} runs/hour), {s3_home / two:.2f}x the time of the local home")
    _print_worker_speed(console, speed, args.worker_steps)
    console.print(f"load average after: {os.getloadavg()[0]:.1f}")


def _print_worker_speed(console: Console, seconds: dict[str, float], steps_: int) -> None:
    here = seconds["this process"]
    console.print(f"one run of {steps_} steps (a*b mod 97, batch 512): " + ", ".join(
        f"{where} {s:.1f} s ({steps_ / s:.1f} steps/s, {here / s:.2f}x this process's speed)"
        for where, s in seconds.items()))


if __name__ == "__main__":
    main()
