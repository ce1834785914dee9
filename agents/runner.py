"""Many agent processes attempting one family's tasks, all logging to the spool.

    report = run_agents("two_hop", n_agents=4, episodes=500, policy="mixed")

Each process (multiprocessing "spawn": no state inherited from the parent) builds
the task world from `seed` and `family_params`, draws `episodes` tasks of `split`
with its own RNG, runs them through `run_episode`, and logs through its own
`TrajectoryLogger`. The parent shows one rich progress bar fed by a queue. The
store is not touched here: ingest the spool afterwards (`grokloop agents run` does).

Policies: "solver", "explorer" (wrong/partial/give-up with `error_rate`), or
"mixed" (each process alternates solver and explorer episodes, so half the data is
the explorer's).
"""

from __future__ import annotations

import multiprocessing as mp
import random
import time
from collections import Counter
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from queue import Empty
from typing import Any

from rich.progress import BarColumn, MofNCompleteColumn, TextColumn, TimeElapsedColumn

from agents import POLICIES
from agents.policies import ExplorerPolicy, SolverPolicy, log_episode
from agents.progress import progress_bar
from agents.sdk import TrajectoryLogger
from agents.tasks import FAMILY_NAMES, SPLITS, get_family
from storage.home import is_url, spool_dir

_PROGRESS_EVERY = 25  # episodes per progress message: a queue put per episode costs more than the episode


@dataclass
class RunnerReport:
    family: str
    policy: str
    split: str
    n_agents: int
    episodes: int                   # per agent process
    trajectories: int               # logged in total
    verified: int
    outcomes: dict[str, int]        # solved | wrong | gave_up | error -> count
    by_agent: dict[str, int]        # agent name -> trajectories
    segments: int                   # spool segments published
    seconds: float
    spool: str
    per_process: list[dict[str, Any]] = field(default_factory=list)

    @property
    def rate(self) -> float:
        """Trajectories generated and logged per second (wall clock, including process start)."""
        return self.trajectories / self.seconds if self.seconds else 0.0

    @property
    def steady_rate(self) -> float:
        """The same, timed inside the processes (first episode to last flush): no start-up cost."""
        slowest = max((p["seconds"] for p in self.per_process), default=0.0)
        return self.trajectories / slowest if slowest else 0.0


def run_agents(
    family: str,
    *,
    n_agents: int = 4,
    episodes: int = 100,
    policy: str = "mixed",
    error_rate: float = 0.3,
    seed: int = 0,
    family_params: dict | None = None,
    spool: Path | None = None,
    split: str = "train",
    progress: bool = True,
) -> RunnerReport:
    """Run `n_agents` processes x `episodes` episodes; returns what they logged.

    The task world is `get_family(family, seed=seed, **family_params)` (a "seed" in
    `family_params` wins); agent randomness derives from `seed` and the process index."""
    params = _checked_params(family, policy, split, n_agents, episodes, seed, family_params)
    spool = spool or spool_dir()
    if not is_url(spool):  # an unwritable home fails here, once, not in every agent process
        Path(spool).mkdir(parents=True, exist_ok=True)

    ctx = mp.get_context("spawn")
    start = time.perf_counter()
    with ctx.Manager() as manager, ProcessPoolExecutor(n_agents, mp_context=ctx) as pool:
        queue = manager.Queue()
        futures = [pool.submit(_agent_process, i, family, params, policy, error_rate, seed, episodes,
                               split, str(spool), queue) for i in range(n_agents)]
        _follow(queue, futures, n_agents * episodes, f"{family} ({policy})", progress)
        results = [f.result() for f in futures]  # re-raises a worker's exception here
    return shard_report(results, family=family, policy=policy, split=split, episodes=episodes,
                        seconds=time.perf_counter() - start, spool=spool)


def run_shard(family: str, index: int, *, episodes: int = 100, policy: str = "mixed",
              error_rate: float = 0.3, seed: int = 0, family_params: dict | None = None,
              spool: Path | str | None = None, split: str = "train") -> dict[str, Any]:
    """Agent process number `index` of `run_agents`, run here, in this process: what one task
    on a cluster worker runs (a Dask worker is a daemon process and may not start its own). The
    same index logs the same trajectories as in `run_agents`. Returns that process's summary;
    `shard_report` adds them up."""
    params = _checked_params(family, policy, split, index + 1, episodes, seed, family_params)
    return _agent_process(index, family, params, policy, error_rate, seed, episodes, split,
                          str(spool or spool_dir()), None)


def shard_report(results: list[dict[str, Any]], *, family: str, policy: str, split: str, episodes: int,
                 seconds: float, spool: Path | str) -> RunnerReport:
    """One report for agent processes' summaries (`_agent_process`, `run_shard`)."""
    outcomes: Counter[str] = Counter()
    by_agent: Counter[str] = Counter()
    for r in results:
        outcomes.update(r["outcomes"])
        by_agent.update(r["by_agent"])
    return RunnerReport(
        family=family, policy=policy, split=split, n_agents=len(results), episodes=episodes,
        trajectories=sum(r["trajectories"] for r in results), verified=sum(r["verified"] for r in results),
        outcomes=dict(outcomes), by_agent=dict(by_agent), segments=sum(r["segments"] for r in results),
        seconds=seconds, spool=str(spool), per_process=results,
    )


def _checked_params(family: str, policy: str, split: str, n_agents: int, episodes: int, seed: int,
                    family_params: dict | None) -> dict[str, Any]:
    """The task world's parameters, after checking the settings; builds the world once so bad
    parameters or an empty split fail before any agent starts."""
    if family not in FAMILY_NAMES:
        raise ValueError(f"unknown task family {family!r}; known: {', '.join(FAMILY_NAMES)}")
    if policy not in POLICIES:
        raise ValueError(f"unknown policy {policy!r}; known: {', '.join(POLICIES)}")
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; known: {', '.join(SPLITS)}")
    if n_agents < 1 or episodes < 0:
        raise ValueError(f"need n_agents >= 1 and episodes >= 0, got {n_agents}, {episodes}")
    params = {"seed": seed, **(family_params or {})}
    fam = get_family(family, **params)
    if episodes and not fam.splits()[split]:
        raise ValueError(f"{family} has no {split} tasks with {params}")
    return params


def _follow(queue, futures, total: int, label: str, progress: bool) -> None:
    """Drain progress messages until every process is done."""
    # A bar in a terminal; in a log, a line every few seconds.
    bar = progress_bar(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                       TextColumn("{task.fields[rate]}"), TimeElapsedColumn(), disable=not progress)
    with bar:
        job = bar.add_task(label, total=total, rate="0 traj/s")
        t0, done = time.perf_counter(), 0
        while not all(f.done() for f in futures) or not queue.empty():
            try:
                done += queue.get(timeout=0.1)
            except Empty:
                continue
            bar.update(job, completed=done, rate=f"{done / max(time.perf_counter() - t0, 1e-9):.0f} traj/s")


def _agent_process(index: int, family: str, params: dict, policy: str, error_rate: float, seed: int,
                   episodes: int, split: str, spool: str, queue) -> dict[str, Any]:
    """One agent process: its own task world, RNG and loggers."""
    fam = get_family(family, **params)
    tasks = fam.splits()[split]
    rng = random.Random(f"runner/{seed}/{index}")
    policies = {"solver": [SolverPolicy()],
                "explorer": [ExplorerPolicy(error_rate, seed=rng.randrange(2**32))],
                "mixed": [SolverPolicy(), ExplorerPolicy(error_rate, seed=rng.randrange(2**32))]}[policy]
    loggers = [TrajectoryLogger(p.name, p.version, spool=spool, kind=p.kind) for p in policies]
    outcomes: Counter[str] = Counter()
    by_agent: Counter[str] = Counter()
    pending = 0
    start = time.perf_counter()
    try:
        for e in range(episodes):
            k = e % len(policies)
            outcomes[log_episode(policies[k], fam, rng.choice(tasks), loggers[k], tags=[f"agent{index}"])] += 1
            by_agent[policies[k].name] += 1
            pending += 1
            if pending == _PROGRESS_EVERY and queue is not None:
                queue.put(pending)
                pending = 0
    finally:
        for lg in loggers:
            lg.close()
        if queue is not None:
            queue.put(pending)
    return {"index": index, "seconds": time.perf_counter() - start, "trajectories": episodes,
            "verified": outcomes["solved"], "outcomes": dict(outcomes), "by_agent": dict(by_agent),
            "segments": sum(lg.segments_written for lg in loggers)}
