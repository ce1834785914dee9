"""Reproducible dataset snapshots: select with SQL, curate, record in the store, export.

    from agents.tasks import get_family
    spec = SnapshotSpec(family="modular", family_params={"p": 23, "seed": 0}, balance_cap=200)
    with open_store() as con:
        snap = build_snapshot(con, spec, get_family(spec.family, **spec.family_params))
    snap.path                                  # <home>/datasets/<dataset_id>/

Same spec + same selected trajectories -> same snapshot. The family is passed in by the caller
(flows/): storage never imports agents.

A snapshot's id is its fingerprint: a hash of the spec (less its display name) and the ids of the
trajectories the query selected. Building it again with nothing new in the store returns the
recorded snapshot without rebuilding (the Prefect curate flow relies on this).

Splits never leak: train rows are the selected trajectories whose task is in the family's train
split, with the agent's verified answer (agent experience becomes training data); test_id and
test_ood are the family generator's test tasks with their canonical answers. A trajectory on a test
task never enters train. Test items get a cluster too (the column value, or the nearest centroid),
so accuracy can be measured per held-out cluster.

The modules, one concern each:
    spec.py      SnapshotSpec, Snapshot, the row schema and `fingerprint` (the snapshot's id)
    select.py    the selection (`storage/sql/select_trajectories.sql` + the spec's `where`)
    build.py     build_snapshot: the curation steps in order (`curate_rows` -> `Curated`)
    record.py    the snapshot into the store and its directory, all or nothing
    export.py    the export directory: Parquet, meta.json, HF DatasetDict, dataset card
    catalog.py   recorded snapshots: find, list, show, export again
Their SQL is in `storage/sql/datasets.sql`.

Export directory (what `diffusion.data.splits_from_snapshot` reads):
    meta.json                  dataset_id, name, family, family_params (incl. seed), spec, counts, clusters
    train.parquet, test_id.parquet, test_ood.parquet
                               task_id, family, split, cluster (nullable), prompt list<string>,
                               answer list<string>, trajectory_id (nullable)
    hf/                        a `datasets.DatasetDict` (save_to_disk)
    README.md                  the dataset card: counts per cluster and split
"""

from storage.datasets.build import ClusterAssignments, Curated, build_snapshot, curate_rows
from storage.datasets.catalog import (
    export_snapshot,
    find_snapshot,
    latest_named,
    list_snapshots,
    resolve_id,
    show_snapshot,
    snapshot_rows,
)
from storage.datasets.export import dataset_card, publish_snapshot, write_export
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

__all__ = [
    "CURATION_VERSION", "ROW_SCHEMA", "SPLITS", "ClusterAssignments", "Curated", "Snapshot", "SnapshotSpec",
    "TaskFamily", "build_snapshot", "curate_rows", "dataset_card", "export_snapshot", "find_snapshot",
    "fingerprint", "latest_named", "list_snapshots", "publish_snapshot", "resolve_id", "select_trajectories", "show_snapshot", "snapshot_rows",
    "write_export",
]
