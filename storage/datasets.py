"""Reproducible dataset snapshots: select with SQL, curate, record in the store, export.

    spec = SnapshotSpec(family="modular", family_params={"p": 23, "seed": 0}, balance_cap=200)
    with open_store() as con:
        snap = build_snapshot(con, spec)      # same spec + same selected trajectories -> same snapshot
    snap.path                                  # <home>/datasets/<dataset_id>/

A snapshot's id is its fingerprint: a hash of the spec (less its display name) and the ids of the
trajectories the query selected. Building it again with nothing new in the store returns the
recorded snapshot without rebuilding (the Prefect curate flow relies on this).

Splits never leak: train rows are the selected trajectories whose task is in the family's train
split, with the agent's verified answer (agent experience becomes training data); test_id and
test_ood are the family generator's test tasks with their canonical answers. A trajectory on a test
task never enters train. Test items get a cluster too (the column value, or the nearest centroid),
so accuracy can be measured per held-out cluster.

Export directory (what `diffusion.data.splits_from_snapshot` reads):
    meta.json                  dataset_id, name, family, family_params (incl. seed), spec, counts, clusters
    train.parquet, test_id.parquet, test_ood.parquet
                               task_id, family, split, cluster (nullable), prompt list<string>,
                               answer list<string>, trajectory_id (nullable)
    hf/                        a `datasets.DatasetDict` (save_to_disk)
    README.md                  the dataset card: counts per cluster and split
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import shutil
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import duckdb
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from storage import curate, shared
from storage.home import datasets_dir
from storage.store import READ_SECONDS, StoreError, one_expression, sandbox, time_limit

# Bumped when curation changes what the same spec and rows produce, so old fingerprints don't collide.
CURATION_VERSION = 1
SPLITS = ("train", "test_id", "test_ood")

ROW_SCHEMA = pa.schema([
    ("task_id", pa.string()), ("family", pa.string()), ("split", pa.string()),
    ("cluster", pa.string()), ("prompt", pa.list_(pa.string())), ("answer", pa.list_(pa.string())),
    ("trajectory_id", pa.string()),
])


@dataclass
class SnapshotSpec:
    """Everything that defines a snapshot. Lists are JSON lists so the spec round-trips through JSON."""

    family: str
    family_params: dict[str, Any] = field(default_factory=dict)   # the task world, incl. "seed"
    # select
    verified_only: bool = True              # training rows are verified answers
    statuses: list[str] | None = field(default_factory=lambda: ["ok"])   # None: any status
    outcomes: list[str] | None = None       # metadata.outcome: solved | wrong | gave_up | error
    agents: list[str] | None = None         # agent ids '{name}@{version}'
    since: str | None = None                # start_time >= since (ISO 8601)
    until: str | None = None                # start_time < until
    where: str | None = None                # extra SQL condition over the selected columns, `?` params
    where_params: list[Any] = field(default_factory=list)
    # featurize (k-means methods)
    feature_columns: list[str] = field(default_factory=lambda: ["operation", "difficulty"])
    n_hash_features: int = 1024             # hashed n-gram columns
    ngram: int = 2                          # 1..ngram-grams of prompt + answer symbols
    # cluster
    cluster_method: str = "column"          # column | kmeans | hkmeans
    cluster_column: str = "operation"       # for column
    n_clusters: int = 8                     # kmeans k; hkmeans top-level k
    n_subclusters: int = 4                  # hkmeans: k inside each top-level cluster
    # dedup
    dedup: str = "exact"                    # none | exact (task_id, answer) | minhash (exact + near)
    minhash_threshold: float = 0.8          # estimated Jaccard over 3-symbol shingles
    # balance
    balance_cap: int | None = None          # at most this many train rows per cluster
    temperature: float = 1.0                # cluster share ∝ size**T: 1 natural, 0 uniform
    balance_total: int | None = None        # train size to fill (None: largest exact-share sample)
    # hold out
    holdout_clusters: list[str] = field(default_factory=list)   # removed from train...
    holdout_keep_k: int = 0                 # ...except k random rows of each
    seed: int = 0                           # k-means init, sampling
    name: str | None = None                 # display name; not part of the fingerprint

    def validate(self) -> None:
        if self.cluster_method not in curate.CLUSTER_METHODS:
            raise ValueError(f"cluster_method must be one of {', '.join(curate.CLUSTER_METHODS)}, "
                             f"got {self.cluster_method!r}")
        if self.dedup not in curate.DEDUP_METHODS:
            raise ValueError(f"dedup must be one of {', '.join(curate.DEDUP_METHODS)}, got {self.dedup!r}")
        if self.n_clusters < 1 or self.n_subclusters < 1:
            raise ValueError(f"n_clusters and n_subclusters must be >= 1, got {self.n_clusters}, "
                             f"{self.n_subclusters}")
        if self.balance_cap is not None and self.balance_cap < 1:
            raise ValueError(f"balance_cap must be >= 1 (or None for no cap), got {self.balance_cap}")
        if self.temperature < 0:
            raise ValueError(f"temperature must be >= 0 (1 natural, 0 uniform), got {self.temperature}")
        if self.holdout_keep_k < 0:
            raise ValueError(f"holdout_keep_k must be >= 0, got {self.holdout_keep_k}")
        if not 0 < self.minhash_threshold <= 1:
            raise ValueError(f"minhash_threshold must be in (0, 1], got {self.minhash_threshold}")
        if self.where is not None and self.where.count("?") != len(self.where_params):
            raise ValueError(f"where {self.where!r} has {self.where.count('?')} '?' but "
                             f"{len(self.where_params)} parameter(s) were given")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> SnapshotSpec:
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - names)
        if unknown:
            raise ValueError(f"unknown snapshot setting(s) {unknown}; settings: {', '.join(sorted(names))}")
        return cls(**data)


@dataclass
class Snapshot:
    dataset_id: str
    name: str | None
    family: str
    path: str                               # the export directory
    n_rows: int
    counts: dict[str, int]                  # rows per split, and what each stage dropped
    clusters: dict[str, dict[str, int]]     # split -> cluster -> rows ('pool': before dedup/balance)
    clustering_id: str | None
    built: bool                             # False: an identical snapshot already existed


# ---- select -------------------------------------------------------------------------------------

def select_trajectories(con: duckdb.DuckDBPyConnection, spec: SnapshotSpec) -> pa.Table:
    """The trajectories the spec selects, as Arrow, in trajectory-id (time) order."""
    sql = resources.files("storage.sql").joinpath("select_trajectories.sql").read_text()
    params = [spec.family, spec.verified_only, spec.statuses, spec.outcomes, spec.agents,
              spec.since, spec.until]
    try:
        table = _arrow(con, sql, params)
    except duckdb.Error as err:
        raise StoreError(f"selecting {spec.family} trajectories failed: {err}") from err
    if spec.where:
        # A user's condition: one expression, run on a sandbox that holds only the selected rows
        # (never on `con`, the writer, which could run a second statement or write files).
        where = one_expression(spec.where)
        sandbox_con = sandbox()
        try:
            sandbox_con.register("selected", table)
            with time_limit(sandbox_con, READ_SECONDS):
                table = _arrow(sandbox_con, f"SELECT * FROM selected WHERE {where} ORDER BY trajectory_id",
                               list(spec.where_params))
        except duckdb.Error as err:
            raise ValueError(f"bad where condition {spec.where!r} (columns: "
                             f"{', '.join(table.column_names)}): {err}") from err
        finally:
            sandbox_con.close()
    return table


# ---- build --------------------------------------------------------------------------------------

def fingerprint(spec: SnapshotSpec, trajectory_ids: list[str], extra: str = "") -> str:
    """sha256 of (curation version, spec less name, selected ids): the snapshot's id."""
    body = {k: v for k, v in spec.to_dict().items() if k != "name"}
    h = hashlib.sha256(json.dumps({"v": CURATION_VERSION, "spec": body, "extra": extra},
                                  sort_keys=True, default=str).encode())
    for tid in sorted(trajectory_ids):
        h.update(tid.encode() + b"\n")
    return h.hexdigest()[:20]


def clustering_fingerprint(spec: SnapshotSpec, trajectory_ids: list[str], extra: str = "") -> str:
    """What the clustering depends on: the rows, the task world, features, method and seed — not
    dedup, balancing or hold-out, so snapshots that differ only there share one clustering."""
    keys = ("family", "family_params", "cluster_method", "cluster_column", "n_clusters", "n_subclusters",
            "feature_columns", "n_hash_features", "ngram", "seed")
    body = {k: getattr(spec, k) for k in keys}
    h = hashlib.sha256(json.dumps({"v": CURATION_VERSION, "clustering": body, "extra": extra},
                                  sort_keys=True, default=str).encode())
    for tid in sorted(trajectory_ids):
        h.update(tid.encode() + b"\n")
    return "cl-" + h.hexdigest()[:17]


def build_snapshot(
    con: duckdb.DuckDBPyConnection, spec: SnapshotSpec, *, home: str | Path | None = None,
    embed: curate.Embed | None = None, progress: bool = False,
) -> Snapshot:
    """Select, curate, record and export a snapshot; an identical one already recorded is returned."""
    from agents.tasks import get_family

    spec.validate()
    params = dict(spec.family_params)
    family = get_family(spec.family, seed=int(params.pop("seed", 0)), **params)
    with _stages(progress) as stage:
        stage("select")
        selected = select_trajectories(con, spec)
        ids = selected["trajectory_id"].to_pylist()
        dataset_id = fingerprint(spec, ids, extra=_embed_name(embed))
        existing = _find(con, dataset_id)
        if existing is not None:
            return _existing_snapshot(con, existing, home)
        rows, clustering, counts, pool_clusters = _curate(selected, family, spec, embed, stage)
        stage("record + export")
        clustering_id = clustering_fingerprint(spec, ids, _embed_name(embed))
        meta = _meta(dataset_id, spec, rows, counts, clustering_id, pool_clusters)
        out = datasets_dir(home) / dataset_id
        _record_and_export(con, rows, meta, clustering, out=out, spec=spec)
    return _snapshot_from_meta(meta, out, built=True)


@dataclass
class _Clustered:
    method: str
    params: dict
    n_clusters: int
    pool: pa.Table                  # trajectory_id, cluster, distance for every row clustered


def _curate(selected: pa.Table, family, spec: SnapshotSpec, embed, stage):
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

    featurizer = X = X_test = None
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
    clustered = _Clustered(
        method=spec.cluster_method,
        params={k: getattr(spec, k) for k in ("cluster_column", "n_clusters", "n_subclusters",
                                               "feature_columns", "n_hash_features", "ngram", "seed")},
        n_clusters=len(pool_clusters),
        pool=pa.table({"trajectory_id": pool["trajectory_id"], "cluster": pa.array(labels.astype(str)),
                       "distance": pa.nulls(pool.num_rows, pa.float64()) if clustering.distances is None
                       else pa.array(clustering.distances, pa.float64())}),
    )
    return rows, clustered, counts, pool_clusters


def _train_pool(selected: pa.Table, family) -> tuple[pa.Table, dict[str, int]]:
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


def _test_table(family) -> pa.Table:
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


def _meta(dataset_id, spec, rows, counts, clustering_id, pool_clusters) -> dict[str, Any]:
    clusters: dict[str, dict[str, int]] = {"pool": pool_clusters}
    for split in SPLITS:
        part = rows.filter(pc.equal(rows["split"], split))
        clusters[split] = _count(pc.fill_null(part["cluster"], "-").to_pylist()) if part.num_rows else {}
    return {
        "dataset_id": dataset_id, "name": spec.name, "family": spec.family,
        "family_params": {"seed": 0, **spec.family_params}, "spec": spec.to_dict(),
        "counts": counts, "clusters": clusters, "clustering_id": clustering_id,
        "curation_version": CURATION_VERSION,
    }


# ---- record + export ----------------------------------------------------------------------------

def _record_and_export(con, rows: pa.Table, meta: dict, clustering: _Clustered, *, out: Path,
                       spec: SnapshotSpec) -> None:
    """Write the export beside its final place, record everything in one transaction, then move it in.
    A failure anywhere leaves neither a half-recorded snapshot nor a half-written directory."""
    tmp = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    write_export(rows, meta, tmp)
    table_rows = rows.append_column("row_idx", pa.array(np.arange(rows.num_rows, dtype=np.int32)))
    table_rows = table_rows.append_column("dataset_id", pa.array([meta["dataset_id"]] * rows.num_rows))
    assignments = clustering.pool.append_column(
        "clustering_id", pa.array([meta["clustering_id"]] * clustering.pool.num_rows, pa.string()))
    try:
        con.execute("BEGIN")
        # Anti joins rather than INSERT OR IGNORE: no primary key needed, so DuckLake runs it too.
        con.execute("INSERT INTO clusterings (clustering_id, method, params, n_clusters) "
                    "SELECT $1, $2, $3, $4 WHERE NOT EXISTS (FROM clusterings WHERE clustering_id = $1)",
                    [meta["clustering_id"], clustering.method, json.dumps(clustering.params), clustering.n_clusters])
        con.register("_grokloop_assignments", assignments)
        con.execute("INSERT INTO cluster_assignments BY NAME SELECT clustering_id, "
                    "trajectory_id::UUID AS trajectory_id, cluster, distance FROM _grokloop_assignments a "
                    "WHERE NOT EXISTS (FROM cluster_assignments c WHERE c.clustering_id = a.clustering_id "
                    "AND c.trajectory_id = a.trajectory_id::UUID)")
        con.execute("INSERT INTO datasets (dataset_id, name, params, clustering_id, n_rows, export_path) "
                    "VALUES (?, ?, ?, ?, ?, ?)",
                    [meta["dataset_id"], spec.name, json.dumps(meta, default=str),
                     meta["clustering_id"], rows.num_rows, str(out)])
        con.register("_grokloop_rows", table_rows)
        con.execute("INSERT INTO dataset_rows BY NAME SELECT dataset_id, row_idx, "
                    "trajectory_id::UUID AS trajectory_id, task_id, family, split, cluster, prompt, answer "
                    "FROM _grokloop_rows")
        shutil.rmtree(out, ignore_errors=True)   # a stale export of an unrecorded snapshot
        tmp.rename(out)
        con.execute("COMMIT")
    except BaseException as err:
        con.execute("ROLLBACK")
        shutil.rmtree(tmp, ignore_errors=True)
        if isinstance(err, duckdb.Error):
            raise StoreError(f"recording snapshot {meta['dataset_id']} failed: {err}") from err
        raise
    finally:
        for name in ("_grokloop_assignments", "_grokloop_rows"):
            with contextlib.suppress(Exception):
                con.unregister(name)


def write_export(rows: pa.Table, meta: dict, out: Path, formats: tuple[str, ...] = ("parquet", "hf")) -> Path:
    """The snapshot directory: meta.json, <split>.parquet, hf/ (DatasetDict) and README.md."""
    out.mkdir(parents=True, exist_ok=True)
    parts = {s: rows.filter(pc.equal(rows["split"], s)).cast(ROW_SCHEMA) for s in SPLITS}
    if "parquet" in formats:
        for split, part in parts.items():
            pq.write_table(part, out / f"{split}.parquet")
        (out / "meta.json").write_text(json.dumps(meta, indent=2, sort_keys=True, default=str))
        (out / "README.md").write_text(dataset_card(meta))
    if "hf" in formats:
        from datasets import Dataset, DatasetDict
        from datasets.utils import (
            are_progress_bars_disabled,
            disable_progress_bars,
            enable_progress_bars,
        )

        hf_dir = out / "hf" if "parquet" in formats else out
        quiet = are_progress_bars_disabled()
        disable_progress_bars()   # three bars per export for a few thousand rows is noise
        try:
            # One shard per split: datasets writes an empty split as zero shards and cannot load it back.
            DatasetDict({s: Dataset(part) for s, part in parts.items()}).save_to_disk(
                str(hf_dir), num_shards={s: 1 for s in parts})
        finally:
            if not quiet:
                enable_progress_bars()
    return out


def publish_snapshot(export_dir: str | Path, shared_home: str) -> str:
    """The snapshot's export on the shared home (<shared_home>/datasets/<dataset_id>, storage/shared.py),
    for trainers on other machines: every file as a whole object, meta.json last (a reader takes the
    export as complete only with it). Published once: the same id is the same rows."""
    export_dir = Path(export_dir)
    url = shared.join(shared_home, "datasets", export_dir.name)
    if not shared.exists(shared.join(url, "meta.json")):
        shared.publish_dir(export_dir, url, last="meta.json")
    return url


def dataset_card(meta: dict) -> str:
    """A Hugging Face dataset card: YAML header (the parquet files as splits), counts, the spec."""
    clusters = meta["clusters"]
    names = sorted({c for s in ("pool", *SPLITS) for c in clusters.get(s, {})})
    lines = [
        "---",
        "configs:",
        "- config_name: default",
        "  data_files:",
        *[f"  - split: {s}\n    path: {s}.parquet" for s in SPLITS],
        "---",
        "",
        f"# {meta.get('name') or meta['dataset_id']}",
        "",
        f"grokloop dataset snapshot `{meta['dataset_id']}` of task family `{meta['family']}` "
        f"({json.dumps(meta['family_params'], sort_keys=True)}).",
        "Train rows are verified agent answers, cluster-balanced; `test_id` / `test_ood` are the "
        "family's test tasks with canonical answers. `pool` is the train pool before dedup and balancing.",
        "",
        "## Counts per cluster and split",
        "",
        "| cluster | pool | " + " | ".join(SPLITS) + " |",
        "|---|---:|" + "---:|" * len(SPLITS),
        *[f"| {c} | " + " | ".join(str(clusters.get(s, {}).get(c, 0)) for s in ("pool", *SPLITS)) + " |"
          for c in names],
        "| **total** | " + " | ".join(str(sum(clusters.get(s, {}).values())) for s in ("pool", *SPLITS)) + " |",
        "",
        "## Curation",
        "",
        "| stage | rows |",
        "|---|---:|",
        *[f"| {k} | {v} |" for k, v in meta["counts"].items()],
        "",
        "## Spec",
        "",
        "```json",
        json.dumps(meta["spec"], indent=2, sort_keys=True, default=str),
        "```",
        "",
    ]
    return "\n".join(lines)


# ---- list / show / export -----------------------------------------------------------------------

def _find(con, dataset_id: str) -> tuple | None:
    found = con.execute("SELECT dataset_id, params, export_path FROM datasets WHERE dataset_id = ?",
                       [dataset_id]).fetchall()
    # fetchall, not fetchone: DuckDB 2 refuses register() while a result is half fetched.
    return found[0] if found else None


def resolve_id(con, dataset_id: str) -> str:
    """A full id from an id or a unique prefix of one."""
    found = [r[0] for r in con.execute("SELECT dataset_id FROM datasets WHERE starts_with(dataset_id, ?) "
                                       "ORDER BY dataset_id", [dataset_id]).fetchall()]
    if not found:
        raise ValueError(f"no dataset snapshot {dataset_id!r}; `grokloop dataset list` shows them")
    if len(found) > 1 and dataset_id not in found:
        raise ValueError(f"{dataset_id!r} matches {len(found)} snapshots ({', '.join(found[:5])}); give more of the id")
    return dataset_id if dataset_id in found else found[0]


def snapshot_rows(con, dataset_id: str) -> pa.Table:
    """The snapshot's rows from the store, in row order, in the export schema."""
    table = _arrow(
        con, "SELECT task_id, family, split, cluster, prompt, answer, trajectory_id::VARCHAR AS trajectory_id "
        "FROM dataset_rows WHERE dataset_id = ? ORDER BY row_idx", [dataset_id])
    return table.cast(ROW_SCHEMA)


def _existing_snapshot(con, found: tuple, home) -> Snapshot:
    dataset_id, params, export_path = found
    meta = json.loads(params)
    out = Path(export_path) if export_path else datasets_dir(home) / dataset_id
    if not (out / "meta.json").is_file():   # the export was deleted: the store still has every row
        write_export(snapshot_rows(con, dataset_id), meta, out)
    return _snapshot_from_meta(meta, out, built=False)


def _snapshot_from_meta(meta: dict, out: Path, *, built: bool) -> Snapshot:
    return Snapshot(
        dataset_id=meta["dataset_id"], name=meta.get("name"), family=meta["family"], path=str(out),
        n_rows=sum(meta["counts"].get(s, 0) for s in SPLITS), counts=meta["counts"],
        clusters=meta["clusters"], clustering_id=meta.get("clustering_id"), built=built,
    )


def list_snapshots(con) -> list[dict[str, Any]]:
    cols = ["dataset_id", "name", "family", "n_rows", "n_train", "n_test_id", "n_test_ood", "created_at",
            "export_path"]
    rows = con.execute(
        "SELECT dataset_id, name, params->>'family', n_rows, (params->'counts'->>'train')::INTEGER, "
        "(params->'counts'->>'test_id')::INTEGER, (params->'counts'->>'test_ood')::INTEGER, created_at, "
        "export_path FROM datasets ORDER BY created_at, dataset_id").fetchall()
    return [dict(zip(cols, r, strict=True)) for r in rows]


def show_snapshot(con, dataset_id: str) -> dict[str, Any]:
    """The snapshot's meta (spec, counts) and its cluster sizes per split, read from the store."""
    dataset_id = resolve_id(con, dataset_id)
    params, export_path, created_at = con.execute(
        "SELECT params, export_path, created_at FROM datasets WHERE dataset_id = ?", [dataset_id]).fetchall()[0]
    meta = json.loads(params)
    sizes = con.execute(
        "SELECT split, cluster, rows_before, rows_after FROM dataset_cluster_sizes WHERE dataset_id = ? "
        "ORDER BY split, cluster", [dataset_id]).fetchall()
    meta["cluster_sizes"] = [dict(zip(("split", "cluster", "rows_before", "rows_after"), r, strict=True))
                             for r in sizes]
    meta["export_path"], meta["created_at"] = export_path, str(created_at)
    return meta


def export_snapshot(con, dataset_id: str, out_dir: str | Path, format: str = "parquet") -> Path:
    """Write a recorded snapshot from the store: `parquet` (meta.json, <split>.parquet, README.md)
    or `hf` (a DatasetDict at out_dir, for `datasets.load_from_disk`)."""
    if format not in ("parquet", "hf"):
        raise ValueError(f"export format must be parquet or hf, got {format!r}")
    dataset_id = resolve_id(con, dataset_id)
    out = Path(out_dir)
    if out.exists() and any(out.iterdir()):
        raise FileExistsError(f"{out} exists and is not empty; choose a new directory")
    meta = json.loads(_find(con, dataset_id)[1])
    return write_export(snapshot_rows(con, dataset_id), meta, out, formats=(format,))


# ---- helpers ------------------------------------------------------------------------------------

def _arrow(con, sql: str, params: list) -> pa.Table:
    # execute(), not sql(): a caller's half-fetched result (a .fetchone()) would make sql() refuse to run.
    # DuckDB warns that this copies the rows once; curation's selections are small next to that.
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Arrow output on a DB-API result")
        return con.execute(sql, params).to_arrow_table()


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
