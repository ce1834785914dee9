"""The embedded store vs the shared store (DuckLake, storage/lake.py), side by side in one run.

    .venv/bin/python bench/store.py [--producers 4] [--steps 10000] [--batch-mb 1] [--repeat 2]

Starts its own PostgreSQL (the DuckLake catalog, as the tests do: tests/postgres_server.py), has
`--producers` agent processes log `--steps` steps each into a spool (10 steps a trajectory), then
ingests copies of that spool, each ingest worker a process of its own that has opened its store
before the clock starts:
  embedded      one worker into <home>/store.duckdb (the default store; one writer at a time)
  lake, 1       one worker into a fresh DuckLake store (Parquet data in the home)
  lake, 2       two workers at once into another fresh one (they share the spool: claims)
and prints steps/s for each (wall time from the start until the last worker is done) and the
ratio to the embedded store. Then a view's query time on each store: `step_counts` and
`success_rate`, as `grokloop sql` runs them (opening the store, then the query) and on an
already open connection, best of 5. Each ingest figure is the best of `--repeat` runs.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

PRODUCER = """
import sys
sys.path.insert(0, {root!r})
from bench.ingest import log_steps
log_steps(__import__("pathlib").Path(sys.argv[1]), int(sys.argv[2]), 10)
"""

# Opens the store, says so, waits for the go (a line on stdin), ingests, reports.
WORKER = """
import json, sys, time
from storage.ingest import ingest_spool
from storage.store import connect
con = connect()
print("ready", flush=True)
sys.stdin.readline()
start = time.time()
report = ingest_spool(con, sys.argv[1], batch_bytes=int(sys.argv[2]))
end = time.time()
con.close()
print(json.dumps({"start": start, "end": end, "steps": report.steps, "segments": report.segments,
                  "held": report.held}), flush=True)
"""


def _env(home: Path, store: str | None) -> dict:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", "GROKLOOP_HOME": str(home)}
    env.pop("GROKLOOP_STORE", None)
    if store:
        env["GROKLOOP_STORE"] = store
    return env


def make_spool(spool: Path, producers: int, steps: int) -> int:
    procs = [subprocess.Popen([sys.executable, "-c", PRODUCER.format(root=str(ROOT)), str(spool), str(steps)])
             for _ in range(producers)]
    for proc in procs:
        assert proc.wait() == 0
    return len(list(spool.glob("*.arrow")))


def ingest(spool: Path, home: Path, store: str | None, workers: int, batch_bytes: int) -> dict:
    """Ingest `spool` with `workers` processes at once; wall seconds and the steps they stored."""
    procs = [subprocess.Popen([sys.executable, "-c", WORKER, str(spool), str(batch_bytes)],
                              env=_env(home, store), stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                              text=True) for _ in range(workers)]
    for proc in procs:
        assert proc.stdout.readline().strip() == "ready"
    for proc in procs:
        proc.stdin.write("go\n")
        proc.stdin.flush()
    results = []
    for proc in procs:
        out, _ = proc.communicate(timeout=3600)
        assert proc.returncode == 0
        results.append(json.loads(out.strip().splitlines()[-1]))
    return {"seconds": max(r["end"] for r in results) - min(r["start"] for r in results),
            "steps": sum(r["steps"] for r in results), "segments": [r["segments"] for r in results]}


def query_times(home: Path, store: str | None, views: list[str], n: int = 5) -> dict[str, tuple[float, float]]:
    """Per view: (best seconds opening the store and querying, best seconds querying an open one)."""
    os.environ["GROKLOOP_HOME"] = str(home)
    os.environ.pop("GROKLOOP_STORE", None)
    if store:
        os.environ["GROKLOOP_STORE"] = store
    from storage.query import run_sql
    from storage.store import connect

    out = {}
    for view in views:
        cold, warm = [], []
        for _ in range(n):
            start = time.perf_counter()
            run_sql(f"SELECT * FROM {view}")
            cold.append(time.perf_counter() - start)
        con = connect(read_only=True)
        for _ in range(n):
            start = time.perf_counter()
            con.execute(f"SELECT * FROM {view}").fetchall()
            warm.append(time.perf_counter() - start)
        con.close()
        out[view] = (min(cold), min(warm))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--producers", type=int, default=4, help="agent processes logging the spool")
    parser.add_argument("--steps", type=int, default=10_000, help="steps each producer logs")
    parser.add_argument("--batch-mb", type=float, default=1.0, help="ingest batch size (MiB)")
    parser.add_argument("--repeat", type=int, default=2)
    args = parser.parse_args()
    from tests.postgres_server import PostgresServer

    tmp = Path(tempfile.mkdtemp(prefix="grokloop-bench-store-"))
    server = PostgresServer.start()
    try:
        spool = tmp / "spool"
        n_segments = make_spool(spool, args.producers, args.steps)
        total = args.producers * args.steps
        print(f"spool: {total:,} steps in {n_segments} segments from {args.producers} producers; "
              f"batches of {args.batch_mb:g} MiB; PostgreSQL on 127.0.0.1:{server.port}")
        cases = {"embedded": (None, 1), "lake, 1 writer": ("lake", 1), "lake, 2 writers": ("lake", 2)}
        best: dict[str, float] = {}
        homes: dict[str, tuple[Path, str | None]] = {}
        for rep in range(args.repeat):
            for name, (kind, workers) in cases.items():  # alternated, so load hits each alike
                home = tmp / f"{name.replace(', ', '-').replace(' ', '')}-{rep}"
                store = server.new_store() if kind else None
                if store:  # made (catalog and schema) once, before the clock, as a lab would
                    subprocess.run([sys.executable, "-c", "from storage.store import connect; connect().close()"],
                                   env=_env(home, store), check=True)
                shutil.copytree(spool, home / "spool")
                got = ingest(home / "spool", home, store, workers, int(args.batch_mb * (1 << 20)))
                assert got["steps"] == total, (name, got)
                rate = total / got["seconds"]
                print(f"  run {rep + 1}  {name:<16} {got['seconds']:7.2f} s  {rate:10,.0f} steps/s  "
                      f"segments per worker {got['segments']}")
                if rate > best.get(name, 0):
                    best[name] = rate
                homes[name] = (home, store)
        print(f"\n{'ingest':<18} {'steps/s':>10}  {'vs embedded':>11}")
        for name, rate in best.items():
            print(f"{name:<18} {rate:10,.0f}  {rate / best['embedded']:10.2f}x")
        views = ["step_counts", "success_rate"]
        print(f"\n{'view query (s)':<18} " + "  ".join(f"{v + ' open+query':>24} {v + ' query':>18}" for v in views))
        for name in ("embedded", "lake, 1 writer"):
            home, store = homes[name]
            times = query_times(home, store, views)
            print(f"{name.split(',')[0]:<18} " + "  ".join(f"{times[v][0]:24.3f} {times[v][1]:18.4f}" for v in views))
    finally:
        server.stop()
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
