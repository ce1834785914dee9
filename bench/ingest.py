"""Ingest throughput: steps/s from the SDK to queryable in the store, next to DuckDB's own Arrow
insert of the same rows in the same run.

    .venv/bin/python bench/ingest.py [--steps 200000] [--steps-per-trajectory 10] [--agents N] [--repeat 3]

The figures, all in steps/s (a step is the unit researchers query):
  end to end   SDK logging (serialize, buffer, fsync'ed Arrow segments) + ingest, until queryable:
               with one agent process, and with N agent processes logging at once (default: one
               per core, as `grokloop collect` runs them; DuckDB's insert uses every core too)
  ingest       `ingest_spool` alone: read segments, validate, quarantine checks, upsert, commit
  raw arrow    the same step rows as an Arrow table (ids and JSON as Arrow's UUID and JSON types,
               as in the segments), `INSERT INTO steps BY NAME SELECT * FROM tbl` into a fresh
               store with the same schema (primary key included) -- the ceiling
Goals: end to end >= 25% of raw arrow, ingest >= 50%. DuckDB's insert uses every core, and so do
agents run the way grokloop runs them (a process per core); one agent on one core is printed too,
with its ceiling: even an ingest as fast as the raw insert leaves it below 25%, because the SDK
alone (Python, about 2.5 us a step with the payload's JSON) takes over three times the raw insert.
Also printed: the time to ingest a 1,000-step spool, which is mostly the per-batch cost a frequent
scheduled ingest pays.
For comparison, also `ingest (jsonl)`: the same records as JSON lines (the store's JSONL export,
cut into spool segments of about 1 MiB), ingested into a fresh store.
Each figure is the best of `--repeat` runs (a fresh spool or store each time), so that a noisy
neighbour on a shared machine moves a ratio less: DuckDB's multi-threaded insert shrugs off a
busy moment that a Python-bound SDK or ingest does not.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import shutil
import tempfile
import time
from pathlib import Path


def log_steps(spool: Path, n_steps: int, per_trajectory: int) -> float:
    from agents.sdk import TrajectoryLogger

    start = time.perf_counter()
    log = TrajectoryLogger("bench-agent", "1", spool=spool, kind="solver")
    for i in range(n_steps // per_trajectory):
        task = {"family": "modular", "task_id": f"modular/add/{i % 97}/{i % 89}", "split": "train",
                "operation": "add", "difficulty": 2, "spec": {"p": 97, "a": i % 97, "b": i % 89}}
        with log.trajectory(task, tags=["bench"]) as t:
            for k in range(per_trajectory):
                t.step(tool_name="add", arguments={"a": k, "b": i % 89}, result=[k + i % 89],
                       observation=f"{k} + {i % 89} = ?", reward=0.0, metadata={"attempt": k})
            t.finish(answer=[(i % 97 + i % 89) % 97], verified=True, reward=1.0)
    log.close()
    return time.perf_counter() - start


def _agent(spool: Path, n_steps: int, per_trajectory: int, ready) -> None:
    ready.wait()
    log_steps(spool, n_steps, per_trajectory)


def log_steps_in_processes(spool: Path, n_steps: int, per_trajectory: int, n_agents: int) -> float:
    """`n_agents` processes logging `n_steps` between them at once; the seconds from their common
    start to the last one's exit. Forked after the imports, so no interpreter start is timed."""
    from agents.sdk import TrajectoryLogger  # noqa: F401  (imported once, before the fork)

    ctx = mp.get_context("fork")
    ready = ctx.Barrier(n_agents + 1)
    share = n_steps // n_agents
    agents = [ctx.Process(target=_agent, args=(spool, share, per_trajectory, ready)) for _ in range(n_agents)]
    for agent in agents:
        agent.start()
    ready.wait()
    start = time.perf_counter()
    for agent in agents:
        agent.join()
        if agent.exitcode:
            raise RuntimeError(f"an agent process exited with {agent.exitcode}")
    return time.perf_counter() - start


def jsonl_spool(con, tmp: Path, segment_bytes: int = 1 << 20) -> Path:
    """The store's trajectories as JSONL records, cut into spool segments at line ends."""
    from storage.export import export_jsonl
    from storage.spool import JSONL_SUFFIX, write_segment

    export_jsonl(con, tmp / "all.jsonl")
    data, spool, start = (tmp / "all.jsonl").read_bytes(), tmp / "jsonl-spool", 0
    while start < len(data):
        end = data.find(b"\n", start + segment_bytes) + 1 or len(data)
        write_segment(spool, data[start:end], suffix=JSONL_SUFFIX)
        start = end
    return spool


def ingest_copy(spool: Path, store: Path):
    """`ingest_spool` of a copy of `spool` into a fresh store (ingest moves what it ingested)."""
    from storage.ingest import ingest_spool
    from storage.store import connect

    copy = store.with_suffix(".spool")
    shutil.copytree(spool, copy)
    con = connect(store)
    report = ingest_spool(con, copy)
    con.close()
    return report


def raw_insert(rows, store: Path) -> float:
    """Seconds for DuckDB to insert `rows` into a fresh store's steps table."""
    from storage.store import connect

    raw = connect(store)
    raw.register("rows", rows)
    start = time.perf_counter()
    raw.execute("INSERT INTO steps BY NAME SELECT * FROM rows")
    seconds = time.perf_counter() - start
    raw.close()
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=200_000)
    parser.add_argument("--steps-per-trajectory", type=int, default=10)
    parser.add_argument("--agents", type=int, default=os.cpu_count(), help="agent processes for the second end to end")
    parser.add_argument("--repeat", type=int, default=3, help="runs of each measurement; the best is kept")
    args = parser.parse_args()
    runs = range(args.repeat)

    from storage.store import connect

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        # The agent processes first, forked while this process is small: `grokloop collect` spawns
        # fresh ones. Forked later, they would pay copy-on-write faults on this process's tables
        # (about 15% of their time).
        t_log_n = min(log_steps_in_processes(tmp / f"spool-n{i}", args.steps, args.steps_per_trajectory, args.agents)
                      for i in runs)
        t_log = min(log_steps(tmp / f"spool{i}", args.steps, args.steps_per_trajectory) for i in runs)
        reports = [ingest_copy(tmp / "spool0", tmp / f"store{i}.duckdb") for i in runs]
        report = min(reports, key=lambda r: r.seconds)
        t_ingest = report.seconds
        con = connect(tmp / "store0.duckdb")
        n = con.execute("SELECT count(*) FROM steps").fetchall()[0][0]
        assert n == report.steps == args.steps // args.steps_per_trajectory * args.steps_per_trajectory, (n, report)
        # The rows typed as the segments carry them (Arrow's UUID and JSON types), the form DuckDB
        # inserts fastest: plain strings would make it parse ids and JSON, a lower ceiling.
        con.execute("SET arrow_lossless_conversion = true")
        rows = con.sql("SELECT * FROM steps").to_arrow_table()
        spool = jsonl_spool(con, tmp)
        con.close()

        t_raw = min(raw_insert(rows, tmp / f"raw{i}.duckdb") for i in runs)
        jsonl_report = min((ingest_copy(spool, tmp / f"jsonl{i}.duckdb") for i in runs), key=lambda r: r.seconds)
        assert jsonl_report.steps == n, jsonl_report
        many_report = min((ingest_copy(tmp / "spool-n0", tmp / f"many{i}.duckdb") for i in runs),
                          key=lambda r: r.seconds)
        per_agent = args.steps // args.agents // args.steps_per_trajectory * args.steps_per_trajectory
        assert many_report.steps == args.agents * per_agent, many_report

        # What a scheduled ingest of a small spool pays: mostly the fixed cost of a batch.
        log_steps(tmp / "spool-small", 1_000, args.steps_per_trajectory)
        t_small = min(ingest_copy(tmp / "spool-small", tmp / f"small{i}.duckdb").seconds for i in runs)

    e2e_n = f"end to end, {args.agents} agents"
    rate = {"end to end, 1 agent": n / (t_log + t_ingest), e2e_n: many_report.steps / (t_log_n + many_report.seconds),
            "ingest": n / t_ingest, "raw arrow": n / t_raw, "ingest (jsonl)": n / jsonl_report.seconds}
    print(f"{n:,} steps in {report.segments} segments ({report.trajectories:,} trajectories); "
          f"SDK {t_log:.2f} s ({args.agents} agents: {t_log_n:.2f} s), ingest {t_ingest:.2f} s, "
          f"raw Arrow insert {t_raw:.2f} s; the same as JSONL: ingest {jsonl_report.seconds:.2f} s "
          f"({jsonl_report.segments} segments)")
    for name, value in rate.items():
        print(f"  {name:<20} {value:>12,.0f} steps/s")
    for name, goal in {e2e_n: 0.25, "ingest": 0.50}.items():
        ratio = rate[name] / rate["raw arrow"]
        print(f"  {name} / raw arrow = {ratio:.2f}  (goal >= {goal:.2f}: {'met' if ratio >= goal else 'MISSED'})")
    # Ingest writes at least the rows the raw insert writes: the most one agent process can reach.
    print(f"  end to end, 1 agent / raw arrow = {rate['end to end, 1 agent'] / rate['raw arrow']:.2f}  (for "
          f"comparison; its ceiling, with an ingest as fast as the raw insert: {t_raw / (t_log + t_raw):.2f})")
    print(f"  ingest (jsonl) / raw arrow = {rate['ingest (jsonl)'] / rate['raw arrow']:.2f}  (for comparison)")
    print(f"  a 1,000-step batch ingests in {1000 * t_small:.0f} ms (the fixed cost of a batch, mostly)")


if __name__ == "__main__":
    main()
