"""Recorded snapshots: find, list, show, and export one again from the store."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import duckdb
import pyarrow as pa

from storage.datasets.export import write_export
from storage.datasets.select import query_arrow
from storage.datasets.spec import ROW_SCHEMA, SPLITS, Snapshot
from storage.home import datasets_dir
from storage.store import sql_blocks

SQL = sql_blocks("datasets.sql")


def find_snapshot(con: duckdb.DuckDBPyConnection, dataset_id: str, home=None) -> Snapshot | None:
    """The recorded snapshot with this exact id (its export written again if it was deleted), or None."""
    # fetchall, not fetchone: DuckDB 2 refuses register() while a result is half fetched.
    found = con.execute(SQL["find"], [dataset_id]).fetchall()
    if not found:
        return None
    _, params, export_path = found[0]
    meta = json.loads(params)
    out = Path(export_path) if export_path else datasets_dir(home) / dataset_id
    if not (out / "meta.json").is_file():   # the export was deleted: the store still has every row
        write_export(snapshot_rows(con, dataset_id), meta, out)
    return snapshot_from_meta(meta, out, built=False)


def latest_named(con: duckdb.DuckDBPyConnection, name: str, family_params: dict, home=None) -> Snapshot | None:
    """The newest recorded snapshot of this name over this task world, without touching its rows (it may
    be one imported runs described: `grokloop import-runs`), or None."""
    for params, export_path in con.execute(SQL["named"], [name]).fetchall():
        meta = json.loads(params)
        if meta.get("family_params") == family_params:
            return snapshot_from_meta(meta, Path(export_path) if export_path else datasets_dir(home) / meta["dataset_id"],
                                      built=False)
    return None


def snapshot_from_meta(meta: dict, out: Path, *, built: bool) -> Snapshot:
    return Snapshot(
        dataset_id=meta["dataset_id"], name=meta.get("name"), family=meta["family"], path=str(out),
        n_rows=sum(meta["counts"].get(s, 0) for s in SPLITS), counts=meta["counts"],
        clusters=meta["clusters"], clustering_id=meta.get("clustering_id"), built=built,
    )


def resolve_id(con: duckdb.DuckDBPyConnection, dataset_id: str) -> str:
    """A full id from an id or a unique prefix of one."""
    found = [r[0] for r in con.execute(SQL["ids_starting_with"], [dataset_id]).fetchall()]
    if not found:
        raise ValueError(f"no dataset snapshot {dataset_id!r}; `grokloop dataset list` shows them")
    if len(found) > 1 and dataset_id not in found:
        raise ValueError(f"{dataset_id!r} matches {len(found)} snapshots ({', '.join(found[:5])}); give more of the id")
    return dataset_id if dataset_id in found else found[0]


def snapshot_rows(con: duckdb.DuckDBPyConnection, dataset_id: str) -> pa.Table:
    """The snapshot's rows from the store, in row order, in the export schema; refused for a snapshot
    only described (imported with runs trained on it elsewhere): an empty export would train on nothing."""
    rows = query_arrow(con, SQL["rows"], [dataset_id]).cast(ROW_SCHEMA)
    if rows.num_rows == 0:
        raise ValueError(f"dataset snapshot {dataset_id} has no rows in this store: it came with imported runs "
                         "(`grokloop import-runs`), described but not copied; build it here with `grokloop dataset build`")
    return rows


def list_snapshots(con: duckdb.DuckDBPyConnection) -> list[dict[str, Any]]:
    result = con.execute(SQL["list"])
    cols = [d[0] for d in result.description]
    return [dict(zip(cols, r, strict=True)) for r in result.fetchall()]


def show_snapshot(con: duckdb.DuckDBPyConnection, dataset_id: str) -> dict[str, Any]:
    """The snapshot's meta (spec, counts) and its cluster sizes per split, read from the store."""
    dataset_id = resolve_id(con, dataset_id)
    params, export_path, created_at = con.execute(SQL["show"], [dataset_id]).fetchall()[0]
    meta = json.loads(params)
    sizes = con.execute(SQL["cluster_sizes"], [dataset_id]).fetchall()
    meta["cluster_sizes"] = [dict(zip(("split", "cluster", "rows_before", "rows_after"), r, strict=True))
                             for r in sizes]
    meta["export_path"], meta["created_at"] = export_path, str(created_at)
    return meta


def export_snapshot(con: duckdb.DuckDBPyConnection, dataset_id: str, out_dir: str | Path,
                    format: str = "parquet") -> Path:
    """Write a recorded snapshot from the store: `parquet` (meta.json, <split>.parquet, README.md)
    or `hf` (a DatasetDict at out_dir, for `datasets.load_from_disk`)."""
    if format not in ("parquet", "hf"):
        raise ValueError(f"export format must be parquet or hf, got {format!r}")
    dataset_id = resolve_id(con, dataset_id)
    out = Path(out_dir)
    if out.exists() and any(out.iterdir()):
        raise FileExistsError(f"{out} exists and is not empty; choose a new directory")
    meta = json.loads(con.execute(SQL["find"], [dataset_id]).fetchall()[0][1])
    return write_export(snapshot_rows(con, dataset_id), meta, out, formats=(format,))
