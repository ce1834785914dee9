"""The loop's steps as plain functions: what the Prefect flows call, callable and tested without Prefect.

Each step opens the store only for as long as it writes (DuckDB has one writer per file)
and returns a small JSON-able dict, so a flow can persist and show it.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from rich.console import Console

from agents.runner import run_agents, run_shard, shard_report
from agents.tasks import get_family
from diffusion import train as training  # training.train looked up per call: tests wrap it
from diffusion.batched import batchable, batching_pays, train_batched
from diffusion.checkpoint import checkpoint_meta, has_checkpoint, resolve_checkpoint
from diffusion.config import TrainConfig, run_id_of
from diffusion.evaluate import evaluate_checkpoint
from flows.config import LoopConfig
from flows.model_agent import model_version, run_model_agent
from storage.datasets import SnapshotSpec, build_snapshot, latest_named, publish_snapshot
from storage.home import grokloop_home, has_store, spool_location, store_location
from storage.ingest import ingest_spool
from storage.runs import mark_stopped
from storage.store import open_store

_stderr = Console(stderr=True)


def collect(cfg: LoopConfig, family: str, *, policy: str | None = None, seed: int | None = None,
            episodes: int | None = None) -> dict[str, Any]:
    """Agents attempt `family`'s training tasks in parallel processes, logging to the spool.

    The task world is always `cfg.seed`'s; `seed` (default `cfg.seed`) only draws which tasks the
    agents attempt and their mistakes, so another seed adds new trajectories to the same world
    rather than repeating the last collect's."""
    report = run_agents(
        family,
        n_agents=cfg.n_agents,
        episodes=cfg.episodes if episodes is None else episodes,
        policy=policy or cfg.policy,
        error_rate=cfg.error_rate,
        seed=cfg.seed if seed is None else seed,
        family_params={**cfg.family_params.get(family, {}), "seed": cfg.seed},
        spool=spool_location(cfg.spool, cfg.home),
        progress=False,
    )
    return {**_as_dict(report), "seed": cfg.seed if seed is None else seed}


def collect_shard(cfg: LoopConfig, family: str, index: int, seed: int | None = None, *,
                  policy: str | None = None) -> dict[str, Any]:
    """Agent process `index` of `collect`, run in this process (one task on a cluster worker):
    the same trajectories that process logs under `collect`. `collect_report` adds shards up."""
    return run_shard(family, index, episodes=cfg.episodes, policy=policy or cfg.policy,
                     error_rate=cfg.error_rate, seed=cfg.seed if seed is None else seed,
                     family_params={**cfg.family_params.get(family, {}), "seed": cfg.seed},
                     spool=spool_location(cfg.spool, cfg.home))


def task_family(cfg: LoopConfig, family: str):
    """The task world `cfg` gives `family`: its parameters, with `cfg.seed`."""
    return get_family(family, **{**cfg.family_params.get(family, {}), "seed": cfg.seed})


def collected(cfg: LoopConfig, family: str) -> bool:
    """Whether the store already has a trajectory on `family`'s training tasks in `cfg`'s world (a
    second `collect` adds new trajectories, new ids: a snapshot built after it is another one)."""
    if not has_store(cfg.home):
        return False
    task_ids = [task.task_id for task in task_family(cfg, family).splits()["train"]]
    with open_store(store_location(cfg.home), read_only=True) as con:
        return con.execute("SELECT count(*) FROM trajectories WHERE task_id IN (SELECT unnest(?::VARCHAR[]))",
                           [task_ids]).fetchone()[0] > 0


def collect_once(cfg: LoopConfig, family: str) -> None:
    """Collect and ingest `family`'s trajectories unless the store has this world's already (after
    ingesting what an interrupted start left in the spool): an experiment started again keeps its
    snapshots and run names, and continues its runs instead of beginning new ones."""
    ingest(cfg)
    if not collected(cfg, family):
        collect(cfg, family)
        ingest(cfg)


def collect_report(cfg: LoopConfig, family: str, shards: list[dict[str, Any]], seconds: float,
                   *, policy: str | None = None) -> dict[str, Any]:
    """`collect`'s report for one family's shards (`collect_shard`)."""
    return _as_dict(shard_report(shards, family=family, policy=policy or cfg.policy, split="train",
                                 episodes=cfg.episodes, seconds=seconds,
                                 spool=spool_location(cfg.spool, cfg.home)))


def ingest(cfg: LoopConfig) -> dict[str, Any]:
    """Spool -> store, exactly once per segment. Runs where the store is, whatever the spool."""
    # The store is opened once per batch, so a researcher's query waits for one batch, not the
    # whole ingest, and a batch that meets a reader's lock waits for it (storage/ingest.py).
    path = store_location(cfg.home)
    return _as_dict(ingest_spool(lambda: open_store(path, timeout=600.0),
                                 spool_location(cfg.spool, cfg.home)))


def snapshot_spec(cfg: LoopConfig, family: str, *, holdout: list[str] | None = None, keep_k: int = 0,
                  name: str | None = None, agents: list[str] | None = None):
    return SnapshotSpec(
        family=family,
        family_params={**cfg.family_params.get(family, {}), "seed": cfg.seed},
        cluster_method=cfg.cluster_method,
        cluster_column=cfg.cluster_column,
        n_clusters=cfg.n_clusters,
        balance_cap=cfg.balance_cap,
        temperature=cfg.temperature,
        holdout_clusters=list(holdout or []),
        holdout_keep_k=keep_k,
        agents=agents,
        seed=cfg.seed,
        name=name or f"{family}-loop",
    )


def curate(cfg: LoopConfig, family: str, **spec_changes: Any) -> dict[str, Any]:
    """Build (or find: same fingerprint, same snapshot) a cluster-balanced dataset snapshot."""
    spec = snapshot_spec(cfg, family, **spec_changes)
    with open_store(store_location(cfg.home)) as con:
        snap = build_snapshot(con, spec, get_family(spec.family, **spec.family_params), home=cfg.home)
    out = _as_dict(snap)
    if cfg.shared_home:  # trainers on other machines read the export there
        out["path"] = publish_snapshot(snap.path, cfg.shared_home)
    return out


def stored_snapshot(cfg: LoopConfig, family: str, name: str) -> dict[str, Any] | None:
    """The newest snapshot called `name` over cfg's task world, as the store describes it (built here, or
    come with imported runs), without building one; None when there is none."""
    family_params = {**cfg.family_params.get(family, {}), "seed": cfg.seed}
    with open_store(store_location(cfg.home), read_only=True) as con:
        snap = latest_named(con, name, family_params, home=cfg.home)
    return None if snap is None else _as_dict(snap)


def train_config(cfg: LoopConfig, family: str, dataset_dir: str | None, *, run_name: str,
                 init_from: str | None = None, **overrides: Any):
    """The TrainConfig of one family's run: loop settings, then `cfg.train_overrides`, then `overrides`."""
    settings = {
        "objective": cfg.objective,
        "family": family,
        "family_params": {**cfg.family_params.get(family, {}), "seed": cfg.seed},
        "dataset": dataset_dir,
        "seed": cfg.seed,
        "run_name": run_name,
        "home": str(grokloop_home(cfg.home)),
        "shared_home": cfg.shared_home,
        "sampler_steps": cfg.sampler_steps,
        "init_from": init_from,
    }
    return TrainConfig(**{**settings, **cfg.train_overrides, **overrides})


def train(train_cfg) -> dict[str, Any]:
    """Train, resuming the run if it already has a checkpoint (so a retry continues, never restarts)."""
    resume = has_checkpoint(train_cfg)
    return _as_dict(training.train(train_cfg, resume=resume))


def train_seeds(cfgs: list, batch: bool | None = None) -> list:
    """The seeds of one setting: as one batched model (diffusion/batched.py) when they share an
    architecture, none has been started yet and `batch` says so (default: where batching pays, when
    they train on a GPU; on a CPU it does not), else one by one (resuming any that exist)."""
    if not cfgs:  # every seed of the setting left out (finished_only, or all finished)
        return []
    batch = batching_pays(cfgs[0]) if batch is None else batch
    if batch and len(cfgs) > 1 and batchable(cfgs) is None and not any(has_checkpoint(c) for c in cfgs):
        return train_batched(cfgs)
    return [training.train(cfg, resume=has_checkpoint(cfg)) for cfg in cfgs]


def record_stopped(cfgs: Sequence[TrainConfig]) -> list[str]:
    """After a fan-out of these runs ended early (Ctrl-C, SIGTERM, one run failing and the cluster
    closing on the others): record as stopped those the store still has as running, and say so. A
    cluster worker killed with the command cannot record its run's end; a run that trained here did
    (stopped or failed) and is left as it is. Returns the run ids marked."""
    marked: list[str] = []
    for home in {cfg.home for cfg in cfgs}:
        run_ids = [run_id for cfg in cfgs if cfg.home == home and (run_id := run_id_of(cfg))]
        try:
            marked += mark_stopped(home, run_ids)
        except Exception as err:  # the error that ended the fan-out is the one to raise
            _stderr.print(f"could not record {len(run_ids)} runs as stopped: {err}")
    if marked:
        _stderr.print(f"recorded as stopped at their last evaluation (their workers ended with this "
                      f"command; the same command continues them): {', '.join(marked)}")
    return marked


def evaluate(cfg: LoopConfig, checkpoint_dir: str) -> dict[str, Any]:
    """ID / OOD accuracy of a checkpoint, written to the store's `evaluations`."""
    return evaluate_checkpoint(checkpoint_dir, n_steps=cfg.sampler_steps, home=cfg.home)


def propose(cfg: LoopConfig, family: str, checkpoint_dir: str, *, episodes: int,
            seed: int | None = None) -> dict[str, Any]:
    """The model agent attempts training tasks drawn with `seed` (default `cfg.seed`; a self-improvement
    round passes its own, so each round meets fresh tasks); the verifier decides; attempts go to the spool."""
    return _as_dict(run_model_agent(
        checkpoint_dir, family=family, family_params={**cfg.family_params.get(family, {}), "seed": cfg.seed},
        episodes=episodes, n_samples=cfg.n_samples, n_steps=cfg.sampler_steps,
        seed=cfg.seed if seed is None else seed, spool=spool_location(cfg.spool, cfg.home),
    ))


def stored_proposals(cfg: LoopConfig, checkpoint_dir: str) -> dict[str, int] | None:
    """What the model agent of `checkpoint_dir` has in the store already ({attempts, verified}), or
    None: a self-improvement round started again does not propose (and store) its answers twice."""
    if not has_store(cfg.home):
        return None
    version = model_version(checkpoint_meta(resolve_checkpoint(checkpoint_dir)))
    with open_store(store_location(cfg.home), read_only=True) as con:
        attempts, verified = con.execute(
            "SELECT count(*), count(*) FILTER (WHERE t.verified) FROM trajectories t JOIN agents a USING (agent_id) "
            "WHERE a.kind = 'model' AND a.version = ?", [version]).fetchone()
    return {"attempts": attempts, "verified": verified} if attempts else None


def recorded_rounds(cfg: LoopConfig, loop_id: str, family: str) -> dict[int, tuple[dict[str, Any], str]]:
    """Round -> (its `self_improve_rounds` row, its run's last checkpoint), for the rounds of `loop_id`
    the store has (a round is recorded once evaluated): a loop started again, or given more rounds,
    goes on from them. A `loop_id` the store has on another family, task world or objective is an error."""
    if not has_store(cfg.home):
        return {}
    with open_store(store_location(cfg.home), read_only=True) as con:
        rows = con.execute(
            "SELECT loop_id, round, run_id, dataset_id, n_proposed, n_verified, test_id_acc, test_ood_acc, "
            "(SELECT path FROM latest_checkpoints c WHERE c.run_id = r.run_id), "
            "(SELECT [config->>'$.family', config->>'$.family_params', config->>'$.objective'] FROM runs "
            "WHERE runs.run_id = r.run_id) FROM self_improve_rounds r WHERE loop_id = ? ORDER BY round",
            [loop_id]).fetchall()
    want = train_config(cfg, family, None, run_name=loop_id)
    if rows:  # round 0's run says which world the loop is on
        run_family, run_params, objective = rows[0][-1]
        stored = (run_family, json.loads(run_params), objective)
        if stored != (want.family, want.family_params, want.objective):
            raise ValueError(f"self-improvement loop {loop_id!r} is in the store on {stored[0]} {stored[1]} "
                             f"({stored[2]}), not on {want.family} {want.family_params} ({want.objective}): "
                             "give this loop another loop_id (--loop-id)")
    keys = ("loop_id", "round", "run_id", "dataset_id", "n_proposed", "n_verified", "test_id_acc", "test_ood_acc")
    return {row[1]: (dict(zip(keys, row[:-2], strict=True)), row[-2]) for row in rows}


def round_seed(seed: int, round_: int) -> int:
    """The draw seed of self-improvement round `round_` (>= 1) of a loop seeded `seed`: distinct per round
    and from the agents' own collect (which draws with `seed`)."""
    return seed * 1_000 + round_ if round_ else seed


def _as_dict(obj: Any) -> dict[str, Any]:
    out = dataclasses.asdict(obj) if dataclasses.is_dataclass(obj) else dict(obj)
    return {k: str(v) if isinstance(v, Path) else v for k, v in out.items()}


def record_round(cfg: LoopConfig, loop_id: str, round_: int, run: dict, snap: dict,
                 proposed: dict | None, evaluation: dict) -> dict[str, Any]:
    """One row of `self_improve_rounds`: what the model proposed, what was verified, what it reached."""
    row = {
        "loop_id": loop_id, "round": round_, "run_id": run["run_id"], "dataset_id": snap["dataset_id"],
        "n_proposed": (proposed or {}).get("attempts", 0), "n_verified": (proposed or {}).get("verified", 0),
        "test_id_acc": evaluation.get("test_id"), "test_ood_acc": evaluation.get("test_ood"),
    }
    with open_store(store_location(cfg.home)) as con:
        con.execute(
            # MERGE (no primary key needed): the same statement on the shared store (DuckLake).
            "MERGE INTO self_improve_rounds USING (SELECT ?::VARCHAR AS loop_id,"
            " ?::INTEGER AS round, ?::VARCHAR AS run_id, ?::VARCHAR AS dataset_id, ?::INTEGER AS n_proposed,"
            " ?::INTEGER AS n_verified, ?::DOUBLE AS test_id_acc, ?::DOUBLE AS test_ood_acc) AS r"
            " ON self_improve_rounds.loop_id = r.loop_id AND self_improve_rounds.round = r.round"
            " WHEN MATCHED THEN UPDATE SET run_id = r.run_id, dataset_id = r.dataset_id, n_proposed = r.n_proposed,"
            " n_verified = r.n_verified, test_id_acc = r.test_id_acc, test_ood_acc = r.test_ood_acc"
            " WHEN NOT MATCHED THEN INSERT BY NAME",
            list(row.values()),
        )
    return row
