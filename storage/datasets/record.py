"""Recording a built snapshot: its clustering, cluster assignments, dataset and rows in the store,
and its export directory beside them, all or nothing. SQL: `storage/sql/datasets.sql`."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import duckdb
import numpy as np
import pyarrow as pa

from storage.datasets.export import write_export
from storage.store import StoreError, sql_blocks

SQL = sql_blocks("datasets.sql")


def record_snapshot(con: duckdb.DuckDBPyConnection, rows: pa.Table, meta: dict, clustering, *,
                    out: Path) -> None:
    """Write the export beside its final place, record everything in one transaction, then move it
    in. A failure anywhere leaves neither a half-recorded snapshot nor a half-written directory.
    `clustering` is the curation's `ClusterAssignments`."""
    tmp = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    write_export(rows, meta, tmp)
    dataset_id, clustering_id = meta["dataset_id"], meta["clustering_id"]
    snapshot_rows = rows.append_column("row_idx", pa.array(np.arange(rows.num_rows, dtype=np.int32)))
    snapshot_rows = snapshot_rows.append_column("dataset_id", pa.array([dataset_id] * rows.num_rows))
    assignment_rows = clustering.pool.append_column(
        "clustering_id", pa.array([clustering_id] * clustering.pool.num_rows, pa.string()))
    try:
        con.execute("BEGIN")
        con.execute(SQL["record_clustering"], [clustering_id, clustering.method, json.dumps(clustering.params),
                                               clustering.n_clusters])
        con.register("assignment_rows", assignment_rows)
        con.execute(SQL["record_assignments"])
        con.execute(SQL["record_dataset"], [dataset_id, meta["name"], json.dumps(meta, default=str),
                                            clustering_id, rows.num_rows, str(out)])
        con.register("snapshot_rows", snapshot_rows)
        con.execute(SQL["record_rows"])
        shutil.rmtree(out, ignore_errors=True)   # a stale export of an unrecorded snapshot
        tmp.rename(out)
        con.execute("COMMIT")
    except BaseException as err:
        con.execute("ROLLBACK")
        shutil.rmtree(tmp, ignore_errors=True)
        if isinstance(err, duckdb.Error):
            raise StoreError(f"recording snapshot {dataset_id} failed: {err}") from err
        raise
    finally:
        for name in ("assignment_rows", "snapshot_rows"):
            con.unregister(name)
