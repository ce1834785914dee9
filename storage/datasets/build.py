"""Building a snapshot: select -> split -> featurize -> cluster -> dedup -> balance -> hold out ->
record + export. The curation steps are `storage.curate`'s pure functions; this module calls them in
order on the selected rows and the task family's splits."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import duckdb
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from storage import curate
from storage.datasets.catalog import find_snapshot, snapshot_from_meta
from storage.datasets.record import record_snapshot
from storage.datasets.select import select_trajectories
from storage.datasets.spec import (
    CURATION_VERSION,
    ROW_SCHEMA,
    SPLITS,
    Snapshot,
    SnapshotSpec,
    TaskFamily,
    fingerprint,
)
from storage.home import datasets_dir


def build_snapshot(
    con: duckdb.DuckDBPyConnection, spec: SnapshotSpec, family: TaskFamily, *,
    home: str | Path | None = None, embed: curate.Embed | None = None, progress: bool = False,
) -> Snapshot:
    """Select, curate, record and export a snapshot; an identical one already recorded is returned.
    `family` is the task family the spec names (`agents.tasks.get_family(spec.family,
    **spec.family_params)`): its splits decide which rows may train and what the tests are."""
    spec.validate()
    with _stages(progress) as stage:
        stage("select")
        selected = select_trajectories(con, spec)
        ids = selected["trajectory_id"].to_pylist()
        extra = _embed_name(embed)
        dataset_id = fingerprint(spec, ids, extra)
        existing = find_snapshot(con, dataset_id, home)
        if existing is not None:
            return existing
        curated = curate_rows(selected, family, spec, embed, stage)
        stage("record + export")
        meta = _meta(dataset_id, spec, curated, fingerprint(spec, ids, extra, clustering=True))
        out = datasets_dir(home) / dataset_id
        record_snapshot(con, curated.rows, meta, curated.clustering, out=out)
    return snapshot_from_meta(meta, out, built=True)


@dataclass
class ClusterAssignments:
    method: str
    params: dict
    n_clusters: int
    pool: pa.Table                  # trajectory_id, cluster, distance for every row clustered


@dataclass
class Curated:
    rows: pa.Table                      # train, test_id and test_ood rows (ROW_SCHEMA)
    clustering: ClusterAssignments      # of the whole train pool
    counts: dict[str, int]              # what each stage kept or dropped, rows per split
    pool_clusters: dict[str, int]       # cluster -> rows of the pool, before dedup and balancing


def curate_rows(selected: pa.Table, family: TaskFamily, spec: SnapshotSpec,
                embed: curate.Embed | None = None, stage=lambda name: None) -> Curated:
    """The selected trajectories as a snapshot's rows: train rows from the family's train tasks,
    clustered, deduplicated, balanced and held out as the spec says; the family's test tasks as
    test rows, each with its cluster."""
    counts = {"selected": selected.num_rows}
    stage("split")
    pool, dropped = _train_pool(selected, family)
    counts.update(dropped)
    counts["pool"] = pool.num_rows
    if pool.num_rows == 0:
        raise ValueError(
            f"no usable trajectories for a {spec.family} snapshot: {counts['selected']} selected, "
            f"{dropped['dropped_test_task']} on test tasks, {dropped['dropped_unknown_task']} on tasks "
            f"the family {spec.family} {spec.family_params} does not have, {dropped['dropped_unfit']} "
            "without an answer that fits the tokenizer. Check the family parameters and filters.")
    tests = _test_table(family)

    X = X_test = None
    if spec.cluster_method != "column":
        stage("featurize")
        featurizer = curate.Featurizer(tuple(spec.feature_columns), spec.n_hash_features, spec.ngram, embed)
        X = featurizer.fit_transform(pool)
        X_test = featurizer.transform(_with_columns(tests, spec.feature_columns)) if tests.num_rows else None
    stage("cluster")
    clustering = curate.cluster(X, method=spec.cluster_method, k=spec.n_clusters, k_sub=spec.n_subclusters,
                                seed=spec.seed, table=pool, column=spec.cluster_column)
    labels = clustering.labels
    pool_clusters = _count(labels)

    stage("dedup")
    keep = np.ones(pool.num_rows, dtype=bool)
    if spec.dedup in ("exact", "minhash"):
        keep &= curate.exact_duplicates(pool["task_id"], pool["answer"])
    if spec.dedup == "minhash":
        tokens = curate.concat_tokens(pool["prompt"], pool["answer"])
        kept = np.nonzero(keep)[0]
        sig = curate.minhash_signatures(tokens.take(pa.array(kept)), seed=spec.seed)
        keep[kept[~curate.near_duplicates(sig, spec.minhash_threshold)]] = False
    idx = np.nonzero(keep)[0]
    counts["duplicates"] = int(pool.num_rows - len(idx))

    stage("balance")
    names, sizes = np.unique(labels[idx].astype(str), return_counts=True)
    quotas = curate.balance_quotas(sizes, cap=spec.balance_cap, temperature=spec.temperature,
                                   total=spec.balance_total)
    chosen = idx[curate.balanced_sample(labels[idx], dict(zip(names.tolist(), quotas.tolist(), strict=True)),
                                        spec.seed)]
    counts["balanced_away"] = int(len(idx) - len(chosen))

    stage("hold out")
    if spec.holdout_clusters:
        unknown = [c for c in spec.holdout_clusters if c not in pool_clusters]
        if unknown:
            raise ValueError(f"cannot hold out unknown cluster(s) {unknown}; the {spec.cluster_method} "
                             f"clusters are {sorted(pool_clusters)}")
        held = curate.holdout_mask(labels[chosen], spec.holdout_clusters, spec.holdout_keep_k, spec.seed)
        counts["held_out"] = int((~held).sum())
        chosen = chosen[held]
    else:
        counts["held_out"] = 0

    train = pool.take(pa.array(chosen))
    if tests.num_rows == 0:
        test_labels = np.array([], dtype=object)
    elif spec.cluster_method == "column" and spec.cluster_column not in tests.column_names:
        test_labels = np.full(tests.num_rows, None, dtype=object)  # e.g. by agent: tests have none
    else:
        test_labels = clustering.predict(tests, X_test)
    rows = pa.concat_tables([
        _rows(train, spec.family, "train", labels[chosen], train["trajectory_id"]),
        _rows(tests, spec.family, tests["split"], test_labels, None),
    ])
    for split in SPLITS:
        counts[split] = int(pc.sum(pc.equal(rows["split"], split)).as_py() or 0)
    assignments = ClusterAssignments(
        method=spec.cluster_method,
        params={k: getattr(spec, k) for k in ("cluster_column", "n_clusters", "n_subclusters",
                                               "feature_columns", "n_hash_features", "ngram", "seed")},
        n_clusters=len(pool_clusters),
        pool=pa.table({"trajectory_id": pool["trajectory_id"], "cluster": pa.array(labels.astype(str)),
                       "distance": pa.nulls(pool.num_rows, pa.float64()) if clustering.distances is None
                       else pa.array(clustering.distances, pa.float64())}),
    )
    return Curated(rows=rows, clustering=assignments, counts=counts, pool_clusters=pool_clusters)


def _train_pool(selected: pa.Table, family: TaskFamily) -> tuple[pa.Table, dict[str, int]]:
    """Selected rows on the family's train tasks, with the family's prompt; counts of what was dropped."""
    splits = family.splits()
    train = {t.task_id: t for t in splits["train"]}
    test_ids = {t.task_id for s in ("test_id", "test_ood") for t in splits[s]}
    tokenizer = family.tokenizer()
    vocab = set(tokenizer.vocab)
    task_ids = selected["task_id"].to_pylist()
    answers = selected["answer"].to_pylist()
    keep, prompts = [], []
    dropped = {"dropped_test_task": 0, "dropped_unknown_task": 0, "dropped_unfit": 0}
    for i, (tid, answer) in enumerate(zip(task_ids, answers, strict=True)):
        task = train.get(tid)
        if task is None:
            dropped["dropped_test_task" if tid in test_ids else "dropped_unknown_task"] += 1
        elif answer is None or len(answer) > tokenizer.answer_len or not vocab.issuperset(answer):
            dropped["dropped_unfit"] += 1   # would not encode: a trainer must never meet it
        else:
            keep.append(i)
            prompts.append(list(task.prompt))
    pool = selected.take(pa.array(keep, pa.int64()))
    pool = pool.set_column(pool.schema.get_field_index("prompt"), "prompt",
                           pa.array(prompts, pa.list_(pa.string())))
    return pool, dropped


def _test_table(family: TaskFamily) -> pa.Table:
    tasks = [(s, t) for s in ("test_id", "test_ood") for t in family.splits()[s]]
    return pa.table({
        "task_id": pa.array([t.task_id for _, t in tasks], pa.string()),
        "split": pa.array([s for s, _ in tasks], pa.string()),
        "operation": pa.array([t.operation for _, t in tasks], pa.string()),
        "difficulty": pa.array([t.difficulty for _, t in tasks], pa.int32()),
        "task_split": pa.array([s for s, _ in tasks], pa.string()),
        "prompt": pa.array([list(t.prompt) for _, t in tasks], pa.list_(pa.string())),
        "answer": pa.array([list(t.answer) for _, t in tasks], pa.list_(pa.string())),
    })


def _with_columns(table: pa.Table, columns) -> pa.Table:
    for col in columns:
        if col not in table.column_names:
            table = table.append_column(col, pa.nulls(table.num_rows, pa.string()))
    return table


def _rows(table: pa.Table, family: str, split, clusters: np.ndarray, trajectory_ids) -> pa.Table:
    n = table.num_rows
    return pa.table({
        "task_id": table["task_id"],
        "family": pa.array([family] * n, pa.string()),
        "split": split if not isinstance(split, str) else pa.array([split] * n, pa.string()),
        "cluster": pa.array([None if c is None else str(c) for c in clusters.tolist()], pa.string()),
        "prompt": table["prompt"].cast(pa.list_(pa.string())),
        "answer": table["answer"].cast(pa.list_(pa.string())),
        "trajectory_id": trajectory_ids if trajectory_ids is not None else pa.nulls(n, pa.string()),
    }, schema=ROW_SCHEMA)


def _count(labels) -> dict[str, int]:
    names, sizes = np.unique(np.asarray(labels, dtype=object).astype(str), return_counts=True)
    return dict(zip(names.tolist(), sizes.tolist(), strict=True))


def _meta(dataset_id: str, spec: SnapshotSpec, curated: Curated, clustering_id: str) -> dict[str, Any]:
    rows = curated.rows
    clusters: dict[str, dict[str, int]] = {"pool": curated.pool_clusters}
    for split in SPLITS:
        part = rows.filter(pc.equal(rows["split"], split))
        clusters[split] = _count(pc.fill_null(part["cluster"], "-").to_pylist()) if part.num_rows else {}
    return {
        "dataset_id": dataset_id, "name": spec.name, "family": spec.family,
        "family_params": {"seed": 0, **spec.family_params}, "spec": spec.to_dict(),
        "counts": curated.counts, "clusters": clusters, "clustering_id": clustering_id,
        "curation_version": CURATION_VERSION,
    }


def _embed_name(embed) -> str:
    return "" if embed is None else f"embed:{getattr(embed, '__qualname__', type(embed).__name__)}"


@contextlib.contextmanager
def _stages(show: bool) -> Iterator:
    """`stage(name)` marks the start of a stage: a rich progress line when shown, nothing otherwise."""
    if not show:
        yield lambda name: None
        return
    from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

    with Progress(SpinnerColumn(), TextColumn("curate: {task.description}"), TimeElapsedColumn(),
                  transient=True) as bar:
        task = bar.add_task("start", total=None)
        yield lambda name: bar.update(task, description=name)
