"""Prefect flows: thin orchestration over `flows.steps` (plain functions, tested without Prefect).

    collect        agents -> spool -> store
    curate         store -> dataset snapshot (cached on its fingerprint)
    train          snapshot -> run (retries resume from the last checkpoint)
    evaluate       run -> ID / OOD accuracy in the store
    loop           collect -> curate -> train -> evaluate: the main job
    self_improve   rounds of model agent -> verifier -> ingest -> curate -> train on -> evaluate
"""

from __future__ import annotations

import secrets
import time
import uuid
from typing import Any

from prefect import flow, get_run_logger, task
from prefect.cache_policies import NONE
from prefect.runtime import flow_run
from prefect.tasks import exponential_backoff

from flows import steps
from flows.config import LoopConfig
from flows.runners import Runner, fan_out

# Every step reads or writes the store, whose contents change between calls with equal arguments,
# so Prefect's input cache would return stale results: caching is off and idempotence lives in the
# steps (segments by hash, snapshots by fingerprint, runs resume by name).
# Ingest and store writes can meet another writer's lock; agents can die: worth a retry.
collect_task = task(steps.collect, name="collect", cache_policy=NONE, retries=2,
                    retry_delay_seconds=exponential_backoff(2))
ingest_task = task(steps.ingest, name="ingest", cache_policy=NONE, retries=3,
                   retry_delay_seconds=exponential_backoff(1))
curate_task = task(steps.curate, name="curate", cache_policy=NONE, retries=2,
                   retry_delay_seconds=exponential_backoff(1))
# A retry calls steps.train again, which resumes from the run's latest checkpoint.
train_task = task(steps.train, name="train", cache_policy=NONE, retries=2, retry_delay_seconds=1)
evaluate_task = task(steps.evaluate, name="evaluate", cache_policy=NONE, retries=2,
                     retry_delay_seconds=exponential_backoff(1))
# The seeds of one experiment setting (steps.train_seeds), one task on a worker.
train_seeds_task = task(steps.train_seeds, name="train-seeds", cache_policy=NONE, retries=2, retry_delay_seconds=1)
# One agent process's share of a collect, for a cluster worker (flows/runners.py). No retry: a
# rerun logs new trajectories (new ids) beside what the first attempt flushed.
collect_shard_task = task(steps.collect_shard, name="collect-shard", cache_policy=NONE)
propose_task = task(steps.propose, name="propose", cache_policy=NONE, retries=1, retry_delay_seconds=1)


def train_on(runner: Runner, train, calls: list[tuple], name: str) -> list[Any]:
    """`fan_out` of a training task (`train_task`, each call's one argument a TrainConfig, or
    `train_seeds_task`, a list of them). If it ends early, the runs it leaves `running` are recorded
    as stopped (`steps.record_stopped`): on a cluster, nothing else would."""
    try:
        return fan_out(runner, train, calls, name=name)
    except BaseException:
        steps.record_stopped([cfg for (arg,) in calls for cfg in (arg if isinstance(arg, list) else [arg])])
        raise


def _config(cfg: LoopConfig | None) -> LoopConfig:
    return cfg if cfg is not None else LoopConfig()


def run_seed() -> int:
    """A draw seed of this flow run's own: from its Prefect id (so a retry of the run draws the same
    tasks again), or random outside a flow run. Recorded in the flow's result."""
    run_id = flow_run.id
    return uuid.UUID(run_id).int % 2**31 if run_id else secrets.randbelow(2**31)


@flow(name="collect")
def collect_flow(cfg: LoopConfig | None = None, fresh_seed: bool = False) -> dict[str, Any]:
    """Run agents on every family's training tasks, then ingest the spool. With `fresh_seed` (what the
    scheduled deployments pass) the agents draw their tasks with a seed of this run's own, so each
    scheduled run adds new trajectories; without it, `cfg.seed` (the same store gets the same data).
    On a cluster (`cfg.runner`), one task per agent process; ingest runs here, next to the store."""
    c = _config(cfg)
    seed = run_seed() if fresh_seed else c.seed
    runner = c.runner_settings()
    if runner.kind == "local":
        collected = {family: collect_task(c, family, seed=seed) for family in c.families}
    else:
        calls = [(c, family, i) for family in c.families for i in range(c.n_agents)]
        start = time.perf_counter()
        shards = fan_out(runner, collect_shard_task, [(*call, seed) for call in calls], name="collect-shards")
        seconds = time.perf_counter() - start
        collected = {family: {**steps.collect_report(c, family, [s for s, call in zip(shards, calls, strict=True)
                                                                 if call[1] == family], seconds), "seed": seed}
                     for family in c.families}
    return {"seed": seed, "collected": collected, "ingested": ingest_task(c)}


@flow(name="curate")
def curate_flow(cfg: LoopConfig | None = None) -> dict[str, Any]:
    """One cluster-balanced snapshot per family; an unchanged store gives the same snapshot back."""
    c = _config(cfg)
    return {family: curate_task(c, family) for family in c.families}


@flow(name="train")
def train_flow(cfg: LoopConfig | None = None, family: str = "modular", dataset_dir: str | None = None,
               run_name: str | None = None) -> dict[str, Any]:
    c = _config(cfg)
    return train_task(steps.train_config(c, family, dataset_dir, run_name=run_name or f"{family}-{c.objective}"))


@flow(name="evaluate")
def evaluate_flow(checkpoint_dir: str, cfg: LoopConfig | None = None) -> dict[str, Any]:
    return evaluate_task(_config(cfg), checkpoint_dir)


@flow(name="loop")
def loop_flow(cfg: LoopConfig | None = None, run_prefix: str = "loop", fresh_seed: bool = False
              ) -> dict[str, Any]:
    """The main job: collect -> curate -> train -> evaluate, every family (`fresh_seed`: as in collect).
    Logs one line as each family starts and one as it ends."""
    c = _config(cfg)
    log = get_run_logger()
    collect_flow(cfg=c, fresh_seed=fresh_seed)
    summary: dict[str, Any] = {}
    for i, family in enumerate(c.families):
        started = time.perf_counter()
        log.info(f"[{i + 1}/{len(c.families)}] {family}: curate -> train "
                 f"{steps.train_config(c, family, None, run_name='-').max_steps:,} steps -> evaluate")
        snap = curate_task(c, family)
        # The run is one task: on a cluster worker when `cfg.runner` says, here otherwise.
        run, = train_on(c.runner_settings(), train_task, [(steps.train_config(
            c, family, snap["path"], run_name=f"{run_prefix}-{family}-{snap['dataset_id'][:8]}"),)], name="train-run")
        evaluation = evaluate_task(c, run["checkpoint_dir"])
        summary[family] = {"dataset": snap, "run": run, "evaluation": evaluation,
                           "seconds": time.perf_counter() - started}
        log.info(family_line(i, len(c.families), family, summary[family]))
    return summary


def family_line(i: int, n: int, family: str, part: dict[str, Any]) -> str:
    """`[1/3] modular: 1,400 steps in 95 s, train 100.0%, ID 98.7%, OOD -, T_mem 600, T_grok 1100 (grokked)`."""
    run, ev = part["run"], part["evaluation"]
    pct = {k: "-" if ev.get(k) is None else f"{100 * ev[k]:.1f}%" for k in ("train", "test_id", "test_ood")}
    return (f"[{i + 1}/{n}] {family}: {run['final_step']:,} steps in {part['seconds']:.0f} s, "
            f"train {pct['train']}, ID {pct['test_id']}, OOD {pct['test_ood']}, "
            f"T_mem {run['t_mem'] if run['t_mem'] is not None else '-'}, "
            f"T_grok {run['t_grok'] if run['t_grok'] is not None else '-'} ({grok_verdict(run, ev)})")


def grok_verdict(run: dict[str, Any], evaluation: dict[str, Any], threshold: float = 0.95) -> str:
    """Whether a run grokked: T_grok set and test ID still at the threshold at its end. A run stopped
    by the patience rule has kept it; one that reached its step cap may have crossed and fallen back."""
    if run["t_grok"] is None:
        return f"did not reach {threshold:.0%} ID"
    if evaluation.get("test_id") is not None and evaluation["test_id"] < threshold:
        return f"reached {threshold:.0%} ID, below it at the end"
    return "grokked"


@flow(name="self-improve")
def self_improve_flow(cfg: LoopConfig | None = None, family: str = "modular", rounds: int = 2,
                      episodes: int = 200, loop_id: str = "self-improve") -> list[dict[str, Any]]:
    """Round r: the model of round r-1 proposes answers to `episodes` training tasks drawn afresh for the
    round (`steps.round_seed`), the verifier keeps the right ones, they are ingested and curated with
    everything else, and training continues from the last checkpoint. Round 0 trains on the agents'
    data alone. Every round is recorded in the store; the same `loop_id` again goes on from the rounds
    recorded (started again after an interruption, or given more rounds) and proposes nothing twice."""
    c = _config(cfg)
    history: list[dict[str, Any]] = []
    checkpoint: str | None = None
    recorded = steps.recorded_rounds(c, loop_id, family)
    for r in range(rounds + 1):
        if r in recorded:
            row, checkpoint = recorded[r]
            history.append(row)
            continue
        ingest_task(c)  # the agents' data, or what an interrupted round left in the spool
        proposed = steps.stored_proposals(c, checkpoint) if checkpoint else None
        if checkpoint and proposed is None:
            proposed = propose_task(c, family, checkpoint, episodes=episodes, seed=steps.round_seed(c.seed, r))
            ingest_task(c)
        snap = curate_task(c, family)
        # Each round trains on from the last: one run at a time, on a worker when `cfg.runner` says.
        run, = train_on(c.runner_settings(), train_task, [(steps.train_config(
            c, family, snap["path"], run_name=f"{loop_id}-r{r}", init_from=checkpoint),)], name="train-round")
        evaluation = evaluate_task(c, run["checkpoint_dir"])
        checkpoint = run["checkpoint_dir"]
        history.append(steps.record_round(c, loop_id, r, run, snap, proposed, evaluation))
    return history

