"""Where a flow's fanned-out tasks run: here, one after another (the default), on a Dask cluster, or on Ray.

    runner="local"                          as before: each task in this process, in turn
    runner="dask"                           a local Dask cluster (`dask_workers` worker processes)
    runner="dask" dask_address=tcp://h:8786 an existing Dask scheduler and its workers
    runner="ray"                            a local Ray instance (`dask_workers` tasks at a time)
    runner="ray" ray_address=ray://h:10001  an existing Ray cluster (or ray_address=auto on one of its nodes)

Dask is the first-class engine, through Prefect's own integration (`prefect-dask`'s
`DaskTaskRunner`): it is pure Python, installs beside the pinned Prefect with no other runtime, a
local cluster starts in seconds (so the tests run a real one), and a scheduler that loses a worker
reruns its tasks on another, which is what lets a training run move (it resumes from its last
checkpoint on the shared home). Ray follows the same seam through `prefect-ray`'s `RayTaskRunner`
(`task_runner`): heavier to install (the `ray` runtime) and slower to start (tens of seconds here),
so it is the second engine, for people who already run a Ray cluster.

One task per agent shard (agent process) and one per training run: those are the units worth a
worker. Ingest, curation and evaluation stay in the flow's own process, next to the store.

Prefect is imported inside the functions that use it: it takes seconds, and `Runner` is read by
`LoopConfig`, which the CLI checks before anything starts.
"""

from __future__ import annotations

import importlib.util
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

RUNNERS = ("local", "dask", "ray")
# what a Dask client connects to: tcp://host:8786, tls://host:8786, or host:8786
DASK_ADDRESS = re.compile(r"^((tcp|tls|ucx)://)?\[?[\w.:-]+?\]?:\d{1,5}$")
# what ray.init connects to: ray://host:10001 (Ray Client), host:6379 (on a node), or auto
RAY_ADDRESS = re.compile(r"^(auto|(ray://)?\[?[\w.:-]+?\]?:\d{1,5})$")
PACKAGES = {"dask": ("prefect_dask", "prefect-dask"), "ray": ("prefect_ray", "prefect-ray")}


@dataclass(frozen=True)
class Runner:
    kind: str = "local"             # local | dask | ray
    address: str | None = None      # an existing cluster: tcp://host:8786 (dask), ray://host:10001 (ray); None starts one
    n_workers: int = 2              # without an address: worker processes (dask) or CPUs (ray) of the local one

    def __post_init__(self):
        if self.kind not in RUNNERS:
            raise ValueError(f"unknown runner {self.kind!r}; known: {', '.join(RUNNERS)}")
        if self.kind == "local" and self.address:
            raise ValueError(f"an address ({self.address}) is set but the runner is local; set runner=dask or ray")
        if self.n_workers < 1:
            raise ValueError(f"dask_workers must be >= 1, got {self.n_workers}")
        if self.kind == "dask" and self.address and not DASK_ADDRESS.match(self.address):
            raise ValueError(f"dask_address {self.address!r} is not a scheduler address; "
                             "expected tcp://host:port (e.g. tcp://10.0.0.5:8786)")
        if self.kind == "ray" and self.address and not RAY_ADDRESS.match(self.address):
            raise ValueError(f"ray_address {self.address!r} is not a Ray address; "
                             "expected ray://host:port (e.g. ray://10.0.0.5:10001) or auto")
        # checked here, with the other settings: not after the agents of a flow have run
        if self.kind in PACKAGES and importlib.util.find_spec(PACKAGES[self.kind][0]) is None:
            raise ValueError(f"runner={self.kind} needs {PACKAGES[self.kind][1]}: pip install 'grokloop[cluster]'")

    def loop_settings(self) -> dict[str, Any]:
        """This runner as LoopConfig's settings (runner, dask_address or ray_address, dask_workers)."""
        address = {f"{self.kind}_address": self.address} if self.kind != "local" else {}
        return {"runner": self.kind, "dask_workers": self.n_workers, **address}


def task_runner(runner: Runner):
    """The Prefect task runner for `runner`'s fan-outs (`fan_out`)."""
    if runner.kind == "local":
        from prefect.task_runners import ThreadPoolTaskRunner

        return ThreadPoolTaskRunner(max_workers=1)
    if runner.kind == "ray":
        from prefect_ray import RayTaskRunner

        if runner.address:
            return RayTaskRunner(address=runner.address)
        # one CPU per task (Ray's default): n_workers runs at a time, one torch thread each
        env = workers_prefect_api()
        return RayTaskRunner(init_kwargs={"num_cpus": runner.n_workers, "include_dashboard": False,
                                          **({"runtime_env": {"env_vars": env}} if env else {})})
    try:  # an optional extra
        from prefect_dask import DaskTaskRunner
    except ImportError as err:
        raise ImportError("runner=dask needs prefect-dask: pip install 'grokloop[cluster]'") from err
    if runner.address:
        return DaskTaskRunner(address=runner.address)
    # One thread per worker process: a worker runs one agent or one training run at a time, as
    # a process of the local runner does, and torch's threads are not shared between two runs.
    return DaskTaskRunner(cluster_class="flows.runners.local_cluster",
                          cluster_kwargs={"n_workers": runner.n_workers, "threads_per_worker": 1,
                                          "env": workers_prefect_api()})


def local_cluster(**kwargs):
    """A distributed.LocalCluster of worker processes (kwargs: LocalCluster's) in which torch trains
    as fast as in a plain process. Dask's nanny sets MALLOC_TRIM_THRESHOLD_=65536 in the workers it
    starts, to hand freed memory back to the OS; setting it at all turns off glibc's adaptive mmap
    threshold, so a training step's large buffers are mapped and unmapped on every step: the same
    run trained at 0.58x a plain process's speed in such a worker (bench/cluster.py). A worker here keeps one run's memory for
    the run's life anyway, so the variable is not set (the nanny reads it when it is made)."""
    import dask
    from distributed import LocalCluster

    with dask.config.set({"distributed.nanny.pre-spawn-environ.MALLOC_TRIM_THRESHOLD_": None}):
        return LocalCluster(processes=True, **kwargs)


def workers_prefect_api() -> dict[str, str]:
    """The environment that points a local cluster's workers at this process's Prefect API. Without
    PREFECT_API_URL, Prefect starts an ephemeral server here, and would start one in every worker too:
    n servers on one SQLite file, started at once on the cores the runs need (a startup timeout on a
    busy machine), and left running when the experiment is stopped (their cleanup is atexit, which a
    killed worker never reaches). Started now, so the workers are told its address instead."""
    from prefect.server.api.server import SubprocessASGIServer
    from prefect.settings import (
        PREFECT_API_URL,
        PREFECT_SERVER_EPHEMERAL_ENABLED,
        PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS,
    )

    if PREFECT_API_URL.value() or not PREFECT_SERVER_EPHEMERAL_ENABLED.value():
        return {}  # a server of the user's (the workers inherit the setting), or none: Prefect's own error
    server = SubprocessASGIServer()  # the one Prefect's client here uses (one per process)
    try:
        server.start()
    except RuntimeError as err:  # Prefect's says only "timed out": say what to change
        raise RuntimeError(
            f"the Prefect server this command starts for its workers did not answer within "
            f"PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS={PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS.value()} s "
            "(cores busy with other runs, or this command under `nice`): set that variable higher, or start "
            "one server (`prefect server start`) and point PREFECT_API_URL at it") from err
    return {"PREFECT_API_URL": server.api_url}


def fan_out(runner: Runner, task, calls: Sequence[tuple], name: str | None = None) -> list[Any]:
    """`task(*args)` for each args in `calls`, results in the same order. Local: in this process,
    in turn (as the flows always did). Dask or Ray: all submitted at once to the cluster, in a subflow
    whose task runner is the cluster (Prefect fixes a flow's task runner when it starts)."""
    from prefect import flow
    from prefect.context import FlowRunContext

    if runner.kind == "local":  # a task inside a flow; outside one (an experiment), the plain function
        call = task if FlowRunContext.get() else task.fn
        return [call(*args) for args in calls]

    @flow(name=name or f"{task.name}-on-{runner.kind}", task_runner=task_runner(runner), validate_parameters=False)
    def on_cluster() -> list[Any]:
        futures = [task.submit(*args) for args in calls]
        return [f.result() for f in futures]

    return on_cluster()
