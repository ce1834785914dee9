"""Where a flow's fanned-out tasks run: here, one after another (the default), or on a Dask cluster.

    runner="local"                          as before: each task in this process, in turn
    runner="dask"                           a local Dask cluster (`dask_workers` worker processes)
    runner="dask" dask_address=tcp://h:8786 an existing Dask scheduler and its workers

Dask is the first-class engine, through Prefect's own integration (`prefect-dask`'s
`DaskTaskRunner`): it is pure Python, installs beside the pinned Prefect with no other runtime, a
local cluster starts in seconds (so the tests run a real one), and a scheduler that loses a worker
reruns its tasks on another, which is what lets a training run move (it resumes from its last
checkpoint on the shared home). Ray fits the same seam (`prefect-ray`'s `RayTaskRunner` in
`task_runner`); it is not wired here.

One task per agent shard (agent process) and one per training run: those are the units worth a
worker. Ingest, curation and evaluation stay in the flow's own process, next to the store.

Prefect is imported inside the functions that use it: it takes seconds, and `Runner` is read by
`LoopConfig`, which the CLI checks before anything starts.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

RUNNERS = ("local", "dask")


@dataclass(frozen=True)
class Runner:
    kind: str = "local"             # local | dask
    address: str | None = None      # dask: an existing scheduler (tcp://host:8786); None starts one
    n_workers: int = 2              # dask without an address: worker processes of the local cluster

    def __post_init__(self):
        if self.kind not in RUNNERS:
            raise ValueError(f"unknown runner {self.kind!r}; known: {', '.join(RUNNERS)}")
        if self.kind == "local" and self.address:
            raise ValueError("dask_address is set but the runner is local; set runner=dask")
        if self.n_workers < 1:
            raise ValueError(f"dask_workers must be >= 1, got {self.n_workers}")


def task_runner(runner: Runner):
    """The Prefect task runner for `runner`'s fan-outs (`fan_out`)."""
    if runner.kind == "local":
        from prefect.task_runners import ThreadPoolTaskRunner

        return ThreadPoolTaskRunner(max_workers=1)
    try:  # an optional extra
        from prefect_dask import DaskTaskRunner
    except ImportError as err:
        raise ImportError("runner=dask needs prefect-dask: pip install 'grokloop[cluster]'") from err
    if runner.address:
        return DaskTaskRunner(address=runner.address)
    # One thread per worker process: a worker runs one agent or one training run at a time, as
    # a process of the local runner does, and torch's threads are not shared between two runs.
    return DaskTaskRunner(cluster_class="distributed.LocalCluster",
                          cluster_kwargs={"n_workers": runner.n_workers, "processes": True,
                                          "threads_per_worker": 1})


def fan_out(runner: Runner, task, calls: Sequence[tuple], name: str | None = None) -> list[Any]:
    """`task(*args)` for each args in `calls`, results in the same order. Local: in this process,
    in turn (as the flows always did). Dask: all submitted at once to the cluster, in a subflow
    whose task runner is the cluster (Prefect fixes a flow's task runner when it starts)."""
    from prefect import flow
    from prefect.context import FlowRunContext

    if runner.kind == "local":  # a task inside a flow; outside one (an experiment), the plain function
        call = task if FlowRunContext.get() else task.fn
        return [call(*args) for args in calls]

    @flow(name=name or f"{task.name}-on-dask", task_runner=task_runner(runner), validate_parameters=False)
    def on_cluster() -> list[Any]:
        futures = [task.submit(*args) for args in calls]
        return [f.result() for f in futures]

    return on_cluster()
