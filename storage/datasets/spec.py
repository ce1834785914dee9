"""What defines a snapshot (`SnapshotSpec`), what a built one is (`Snapshot`), and its id."""

from __future__ import annotations

import dataclasses
import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import pyarrow as pa

from storage import curate

# Bumped when curation changes what the same spec and rows produce, so old fingerprints don't collide.
CURATION_VERSION = 2  # 2: trajectories in content order (task, answer), not time order
SPLITS = ("train", "test_id", "test_ood")

ROW_SCHEMA = pa.schema([
    ("task_id", pa.string()), ("family", pa.string()), ("split", pa.string()),
    ("cluster", pa.string()), ("prompt", pa.list_(pa.string())), ("answer", pa.list_(pa.string())),
    ("trajectory_id", pa.string()),
])

# What the clustering depends on: the rows, the task world, features, method and seed; not dedup,
# balancing or hold-out, so snapshots that differ only there share one clustering.
CLUSTERING_KEYS = ("family", "family_params", "cluster_method", "cluster_column", "n_clusters",
                   "n_subclusters", "feature_columns", "n_hash_features", "ngram", "seed")


class TaskFamily(Protocol):
    """What a snapshot needs of the spec's task family (an `agents.tasks` family; the caller builds
    it, storage never imports agents): its task splits and the tokenizer a row must fit."""

    def splits(self) -> dict[str, Sequence[Any]]: ...   # split -> tasks (task_id, prompt, answer, operation, difficulty)

    def tokenizer(self) -> Any: ...                       # .vocab, .answer_len


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


def fingerprint(spec: SnapshotSpec, trajectory_ids: list[str], extra: str = "", *,
                clustering: bool = False) -> str:
    """The snapshot's id: sha256 of (curation version, the spec less its name, `extra`) and the
    selected trajectory ids. With `clustering`, its clustering's id ("cl-..."): the same over
    `CLUSTERING_KEYS` of the spec only."""
    if clustering:
        part = {"clustering": {k: getattr(spec, k) for k in CLUSTERING_KEYS}}
    else:
        part = {"spec": {k: v for k, v in spec.to_dict().items() if k != "name"}}
    h = hashlib.sha256(json.dumps({"v": CURATION_VERSION, **part, "extra": extra},
                                  sort_keys=True, default=str).encode())
    for tid in sorted(trajectory_ids):
        h.update(tid.encode() + b"\n")
    return "cl-" + h.hexdigest()[:17] if clustering else h.hexdigest()[:20]
