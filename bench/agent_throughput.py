"""Trajectories/s generated and logged (to spool segments) with 1, 2 and 4 agent processes.

    .venv/bin/python bench/agent_throughput.py                       # all families, 20000 episodes per process
    .venv/bin/python bench/agent_throughput.py --family two_hop --episodes 500 --agents 1 2 4

Rates are wall clock over the whole run, process start-up (spawn) included, so
they are what `grokloop agents run` delivers. "in-process" is one loop in this
process with no spawn, the floor the processes are measured against. "steady" rates
are timed inside the processes (no start-up). Speed-up is rate / rate with 1 process;
it cannot exceed the free cores (printed).
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

from rich.console import Console
from rich.table import Table

from agents.tasks import FAMILY_NAMES


def in_process(family: str, episodes: int, spool: Path) -> float:
    """Trajectories/s of the mixed policy in this process, no multiprocessing."""
    from agents.policies import ExplorerPolicy, SolverPolicy, log_episode
    from agents.sdk import TrajectoryLogger
    from agents.tasks import get_family

    fam = get_family(family, seed=0)
    tasks = fam.splits()["train"]
    policies = [SolverPolicy(), ExplorerPolicy(0.3, seed=0)]
    loggers = [TrajectoryLogger(p.name, spool=spool, kind=p.kind) for p in policies]
    start = time.perf_counter()
    for e in range(episodes):
        log_episode(policies[e % 2], fam, tasks[e % len(tasks)], loggers[e % 2])
    for lg in loggers:
        lg.close()
    return episodes / (time.perf_counter() - start)


def main() -> None:
    from agents.runner import run_agents
    from storage.spool import published_segments, read_records

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--family", default="all", choices=("all", *FAMILY_NAMES))
    ap.add_argument("--episodes", type=int, default=20000, help="episodes per agent process")
    ap.add_argument("--agents", type=int, nargs="+", default=[1, 2, 4])
    args = ap.parse_args()
    families = FAMILY_NAMES if args.family == "all" else (args.family,)
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    console = Console(width=150)
    table = Table(title=f"agents: trajectories/s, mixed policy, {args.episodes} episodes per process, "
                        f"{cores} cores visible")
    for col in ("family", "agents", "trajectories", "seconds", "traj/s", "speed-up", "steady traj/s",
                "steady speed-up", "steps/traj"):
        table.add_column(col, justify="right")
    for family in families:
        with tempfile.TemporaryDirectory() as tmp:
            rate = in_process(family, args.episodes, Path(tmp))
        table.add_row(family, "in-process", str(args.episodes), f"{args.episodes / rate:.2f}", f"{rate:,.0f}",
                      "", f"{rate:,.0f}", "", "")
        base = steady_base = None
        for n in args.agents:
            with tempfile.TemporaryDirectory() as tmp:
                report = run_agents(family, n_agents=n, episodes=args.episodes, policy="mixed",
                                    spool=Path(tmp), progress=False)
                n_steps = sum(r["type"] == "step" for seg in published_segments(Path(tmp))
                              for r in read_records(seg))
            steps = n_steps / report.trajectories
            base, steady_base = base or report.rate, steady_base or report.steady_rate
            table.add_row(family, str(n), str(report.trajectories), f"{report.seconds:.2f}",
                          f"{report.rate:,.0f}", f"{report.rate / base:.2f}x", f"{report.steady_rate:,.0f}",
                          f"{report.steady_rate / steady_base:.2f}x", f"{steps:.1f}")
    console.print(table)


if __name__ == "__main__":
    main()
