"""Faults under load: N agent processes logging while some are killed (SIGKILL) or stopped
(SIGTERM) at random, `grokloop ingest` runs again and again, and a reader queries in a loop.

    .venv/bin/python bench/faults.py                        # 4 agents, 30 s of faults
    .venv/bin/python bench/faults.py --agents 8 --seconds 120

At the end the survivors get SIGTERM, one more ingest runs, and it prints, for steps:
flushed (distinct (trajectory, index) in every published segment, ingested or not), stored (rows
in the store), lost (flushed, not stored), duplicated (published twice, or stored twice), and
every command that failed: an agent that exited other than by its signal, an ingest or a reader
query with a non-zero exit. The goal: 0 lost, 0 duplicated, 0 failed. A SIGKILLed agent loses
its unflushed buffer by design (it was never flushed); a SIGTERMed one flushes it.
"""

from __future__ import annotations

import argparse
import collections
import os
import random
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import duckdb
from rich.console import Console
from rich.table import Table

AGENT = """
import random, sys
from agents.sdk import TrajectoryLogger
worker = sys.argv[1]
rng = random.Random(worker)
log = TrajectoryLogger(f"agent-{worker}", "1", flush_bytes=16 << 10, flush_seconds=0.5)
n = 0
while True:
    with log.trajectory({"family": "modular", "task_id": f"m/{worker}/{n}"}) as t:
        for k in range(rng.randint(1, 20)):
            t.step(tool_name="add", arguments={"k": k, "pad": "x" * rng.randint(0, 200)}, result=k)
        t.finish(answer=[n], verified=rng.random() < 0.5, reward=1.0)
    n += 1
"""


def cli(*args: str, env: dict) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "flows.cli", *args], capture_output=True, text=True, env=env)


def loop(command: list[str], env: dict, stop: threading.Event, runs: collections.Counter,
         failures: list[str], pause: float) -> None:
    while not stop.is_set():
        result = cli(*command, env=env)
        runs[command[0]] += 1
        if result.returncode != 0:
            failures.append(f"{' '.join(command)} -> exit {result.returncode}: "
                            f"{(result.stderr.strip().splitlines() or [''])[-1]}")
        stop.wait(pause)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--agents", type=int, default=4)
    parser.add_argument("--seconds", type=float, default=30.0)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    rng = random.Random(args.seed)
    home = Path(tempfile.mkdtemp(prefix="grokloop-faults-"))
    repo = Path(__file__).resolve().parent.parent
    env = {**os.environ, "GROKLOOP_HOME": str(home), "OMP_NUM_THREADS": "1",
           "PYTHONPATH": os.pathsep.join([str(repo), os.environ.get("PYTHONPATH", "")])}
    console = Console()
    console.print(f"home {home}: {args.agents} agents, {args.seconds:.0f} s of faults")

    counter = iter(range(1 << 30))
    agents: dict[int, subprocess.Popen] = {}
    ended: list[tuple[subprocess.Popen, signal.Signals | None]] = []

    def spawn() -> None:
        proc = subprocess.Popen([sys.executable, "-c", AGENT, str(next(counter))], env=env,
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        agents[proc.pid] = proc

    first = cli("ingest", env=env)  # creates the store, so the reader's first query has one
    assert first.returncode == 0, first.stderr
    for _ in range(args.agents):
        spawn()
    stop = threading.Event()
    runs: collections.Counter = collections.Counter()
    failures: list[str] = []
    threads = [threading.Thread(target=loop, args=(["ingest", "--timeout", "120"], env, stop, runs, failures, 0.5)),
               threading.Thread(target=loop, args=(["sql", "--timeout", "120", "SELECT count(*) FROM steps s "
                                                    "JOIN trajectories t USING (trajectory_id)"],
                                                   env, stop, runs, failures, 0.2))]
    for thread in threads:
        thread.start()

    signals = collections.Counter()
    deadline = time.monotonic() + args.seconds
    while time.monotonic() < deadline:
        time.sleep(rng.uniform(0.2, 1.0))
        pid = rng.choice(list(agents))
        sig = rng.choice([signal.SIGKILL, signal.SIGTERM])
        agents[pid].send_signal(sig)
        ended.append((agents.pop(pid), sig))
        signals[sig.name] += 1
        spawn()
    for proc in agents.values():  # the survivors stop as a scheduler would stop them
        proc.send_signal(signal.SIGTERM)
        ended.append((proc, signal.SIGTERM))
    stop.set()
    for thread in threads:
        thread.join()
    for proc, sig in ended:
        proc.wait()
        err = proc.stderr.read()
        if proc.returncode != -sig or err.strip():
            failures.append(f"agent pid {proc.pid} ({sig.name}) -> exit {proc.returncode}: "
                            f"{(err.strip().splitlines() or [''])[-1]}")
    final = cli("ingest", "--timeout", "120", env=env)
    if final.returncode != 0:
        failures.append(f"final ingest -> exit {final.returncode}: {final.stderr.strip()}")

    flushed, records = _published_steps(home / "spool")
    con = duckdb.connect(str(home / "store.duckdb"), read_only=True)
    stored = con.execute("SELECT count(*), count(DISTINCT (trajectory_id, idx)) FROM steps").fetchall()[0]
    con.register("flushed_keys", _keys_table(flushed))
    lost = con.execute("SELECT count(*) FROM (SELECT tid::UUID AS trajectory_id, idx FROM flushed_keys) "
                       "ANTI JOIN steps USING (trajectory_id, idx)").fetchall()[0][0]
    quarantined = con.execute("SELECT count(*) FROM quarantine").fetchall()[0][0]
    leftover_tmp = len(list((home / "spool").glob("*.tmp")))
    con.close()

    table = Table("figure", "value")
    for name, value in [
        ("agents started", next(counter)), ("SIGKILL / SIGTERM sent", f"{signals['SIGKILL']} / {signals['SIGTERM']}"),
        ("ingest runs / reader queries", f"{runs['ingest']} / {runs['sql']}"),
        ("steps flushed (distinct keys in published segments)", f"{len(flushed):,}"),
        ("steps stored", f"{stored[0]:,}"),
        ("lost (flushed, not stored)", lost),
        ("duplicated (published twice + stored twice)", f"{records - len(flushed)} + {stored[0] - stored[1]}"),
        ("quarantined records", quarantined), (".tmp files left (SIGKILL mid-write; ingest removes them once stale)", leftover_tmp),
        ("failed commands", len(failures)),
    ]:
        table.add_row(name, str(value))
    console.print(table)
    for failure in failures:
        console.print(f"[red]failed:[/red] {failure}", soft_wrap=True)


def _published_steps(spool: Path) -> tuple[set[tuple[str, int]], int]:
    from storage.spool import published_segments, read_records

    keys, records = set(), 0
    for folder in (spool, spool / "ingested"):
        for segment in published_segments(folder):
            for record in read_records(segment):
                if record["type"] == "step":
                    keys.add((record["trajectory_id"], record["index"]))
                    records += 1
    return keys, records


def _keys_table(keys: set[tuple[str, int]]):
    import pyarrow as pa

    ids, idx = zip(*keys, strict=True) if keys else ((), ())
    return pa.table({"tid": pa.array(ids, pa.string()), "idx": pa.array(idx, pa.int32())})


if __name__ == "__main__":
    main()
