"""A training run's records in the store: the run row, its metrics, checkpoints and evaluations.

Training never fails because the store is busy (`storage/store.py` says how readers and writers
share it). Each write is one short transaction. When the store stays locked for `timeout` s (a
researcher's long query, an ingest), the records are written to the run's directory instead, as a
pending file (`runs/<run_id>/pending/<time>.json`: write, then rename), and reach the store with
the run's next write that gets through, at the end of the run (which waits `FINAL_TIMEOUT`), or at
the next `grokloop ingest` (`flush_pending`). A run row carries the time it was made
(`updated_at`), so a pending record that reaches the store late never replaces a newer status.
`mark_stopped` records as stopped runs whose process is gone (`quiet_runs` lists the likely ones).
`export_runs` / `import_runs` carry runs and their metrics between stores as one Parquet file
(what a results page ships, so its numbers outlive the store they came from; an import never mixes
another training under the same run id into a stored run); `match_runs` reads a glob pattern as the
run ids it matches.
The SQL is in `storage/sql/runs.sql`.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import duckdb
import pyarrow as pa
import pyarrow.parquet as pq

from storage import lake
from storage.home import has_store, runs_dir, store_location
from storage.store import StoreLocked, connect, open_store, sql_blocks

WRITE_TIMEOUT = 5.0     # a run's write waits this long for the store, then waits as a file instead
FINAL_TIMEOUT = 600.0   # the last write of a run waits longer, so its final status lands
PENDING_DIR = "pending"

_SQL = sql_blocks("runs.sql")


def record_run(home, row: dict, metrics: Sequence[tuple[int, str, float]] = (),
               checkpoints: Sequence[tuple[int, Any]] = (), *, final: bool = False) -> bool:
    """Upsert the run row, add metrics (step, name, value) and checkpoints (step, path). True if
    it reached the store, False if it waits in the run directory (the store was busy). A `final`
    write (the run is over) waits FINAL_TIMEOUT for the store instead of WRITE_TIMEOUT."""
    record = {"run": {**row, "updated_at": datetime.now(UTC).replace(tzinfo=None).isoformat()},
              "metrics": [list(m) for m in metrics],
              "checkpoints": [[step, str(path)] for step, path in checkpoints]}
    return _write(home, row["run_id"], record, FINAL_TIMEOUT if final else WRITE_TIMEOUT)


def record_evaluation(home, run_id: str, rows: list[dict]) -> bool:
    """Add evaluation rows (run_id, step, family, split, n, accuracy, sampler), as a final
    record_run: True if they reached the store, False if they wait in the run directory."""
    return _write(home, run_id, {"evaluations": rows}, FINAL_TIMEOUT)


def mark_stopped(home, run_ids: Sequence[str]) -> list[str]:
    """Record as `stopped` those of `run_ids` the store has as `running` (storage/sql/runs.sql
    `mark_stopped`); returns them, sorted. A busy store is waited for 30 s (a stopped command should
    not hang), then StoreLocked."""
    if not run_ids or not has_store(home):
        return []
    now = datetime.now(UTC).replace(tzinfo=None)

    def mark(con: duckdb.DuckDBPyConnection) -> list[str]:
        con.execute("BEGIN")
        try:
            running = [r for (r,) in con.execute(_SQL["select_running"], [list(run_ids)]).fetchall()]
            con.execute(_SQL["mark_stopped"], [now, running])
            con.execute("COMMIT")
        except BaseException:
            con.execute("ROLLBACK")
            raise
        return running

    with open_store(store_location(home), timeout=30.0) as con:
        return lake.retry_conflicts(lambda: mark(con), "recording runs as stopped")


def quiet_runs(home, quiet_for: timedelta) -> list[tuple[str, datetime]]:
    """[(run_id, its last record)] of the runs the store has as `running` with no record for
    `quiet_for`, the quietest first: their process is likely gone (`grokloop mark-stopped`)."""
    if not has_store(home):
        return []
    since = datetime.now(UTC).replace(tzinfo=None) - quiet_for
    with open_store(store_location(home), read_only=True, timeout=WRITE_TIMEOUT) as con:
        return con.execute(_SQL["select_quiet_running"], [since]).fetchall()


def stored_metrics(home, run_id: str, step: int) -> dict[str, float]:
    """The evaluation recorded at `step` (in the store, or still pending in the run directory):
    what a resumed, already complete run reports."""
    found = {}
    try:
        with open_store(store_location(home), read_only=True, timeout=WRITE_TIMEOUT) as con:
            found = dict(con.execute(_SQL["select_metrics"], [run_id, step]).fetchall())
    except StoreLocked:
        pass
    for path in _pending(runs_dir(home) / run_id):
        found |= {name: value for s, name, value in _load(path).get("metrics", []) if s == step}
    return found


def last_stored_step(home, run_id: str) -> int | None:
    """The last step the store has an evaluation of `run_id` at (None: none, or no store yet). A busy
    store is waited for (FINAL_TIMEOUT): what is asked decides whether a run may write over a curve."""
    if not has_store(home):
        return None
    with open_store(store_location(home), read_only=True, timeout=FINAL_TIMEOUT) as con:
        return con.execute(_SQL["select_last_step"], [run_id]).fetchone()[0]


def flush_pending(con: duckdb.DuckDBPyConnection, home=None) -> int:
    """Write every run's pending records to the store (one transaction), then remove their files.
    Returns how many files."""
    paths = sorted((p for run in _run_dirs(home) for p in _pending(run)), key=lambda p: p.name)
    if paths:
        _apply_all(con, [_load(p) for p in paths])
        for path in paths:
            path.unlink(missing_ok=True)
    return len(paths)


def pending_records(home=None) -> int:
    """How many records wait in run directories for the store."""
    return sum(len(_pending(run)) for run in _run_dirs(home))


def runs_trained_on(home, run_ids: Sequence[str]) -> list[tuple[dict | None, int]]:
    """[(where runs trained: {"torch", "device", "threads"}, or None where a run's row predates the
    record; how many of these runs)], the most common first."""
    with open_store(store_location(home), read_only=True) as con:
        rows = con.execute(_SQL["select_trained_on"], [list(run_ids)]).fetchall()
    return [(json.loads(where) if where else None, n) for where, n in rows]


def match_runs(home, pattern: str, *, stored: bool = False) -> list[str]:
    """The run ids a glob pattern matches (`clusters-15pct*-s?-*`), in order; a plain run id is returned
    as it is, without reading the store (`stored`: it too must be in the store). A pattern that
    matches no stored run is an error naming it."""
    if not stored and not any(c in pattern for c in "*?["):
        return [pattern]
    if not has_store(home):
        raise ValueError(f"no run in the store matches {pattern!r}: there is no store at {store_location(home)}")
    with open_store(store_location(home), read_only=True) as con:
        run_ids = [r for (r,) in con.execute(_SQL["match_runs"], [pattern]).fetchall()]
    if not run_ids:
        raise ValueError(f"no run in the store matches {pattern!r}")
    return run_ids


def export_runs(home, run_ids: Sequence[str], path: str | Path) -> int:
    """Write these runs and every metric they recorded to one Parquet file (storage/sql/runs.sql
    `export_runs`: a row per run, step and metric). Returns how many runs it holds. A run the store
    does not have is an error, and nothing is written (a file already there stays as it was)."""
    with open_store(store_location(home), read_only=True) as con:
        table = con.execute(_SQL["export_runs"], [list(run_ids)]).to_arrow_table()
    if missing := sorted(set(run_ids) - set(table.column("run_id").to_pylist())):
        raise ValueError(f"not in the store: run(s) {', '.join(missing)}; nothing written")
    tmp = Path(f"{path}.tmp")
    pq.write_table(table, tmp)
    os.replace(tmp, path)  # a reader never sees half a file
    return len(set(table.column("run_id").to_pylist()))


def import_runs(home, path: str | Path) -> int:
    """Put the runs of an `export_runs` file in the store, in one transaction: a run the store
    already holds keeps the newer of the two rows (`updated_at`), metrics are upserted. A file
    that is not such an export changes nothing and says what is wrong; so does a file whose run
    the store holds as another training under the same id (`_other_trainings`). Returns how many runs."""
    try:
        table = pq.read_table(path)
    except (OSError, pa.ArrowException) as e:
        raise ValueError(f"{path} is not a Parquet file of runs (grokloop's export_runs): {e}") from e
    if missing := [c for c in EXPORT_COLUMNS if c not in table.column_names]:
        raise ValueError(f"{path} lacks column(s) {', '.join(missing)} of a runs export; it has "
                         f"{', '.join(table.column_names)}")
    records: dict[str, dict] = {}
    # Files written before exports described the runs' snapshots have no dataset_params.
    columns = EXPORT_COLUMNS + [c for c in ("dataset_params",) if c in table.column_names]
    for row in table.select(columns).to_pylist():
        if row["run_id"] is None or row["config"] is None or row["objective"] is None or row["status"] is None:
            raise ValueError(f"{path}: a row without its run's run_id, objective, config or status: {row}")
        run = {k: row[k] for k in _RUN_COLUMNS} | {"name": row["run_name"], "updated_at": str(row["updated_at"])}
        record = records.setdefault(row["run_id"], {"run": run, "metrics": []})
        if row["step"] is not None:
            record["metrics"].append([row["step"], row["metric"], row["value"]])
        if row.get("dataset_params") and "dataset" not in record:
            record["dataset"] = _snapshot_described(path, row)
    con = connect(store_location(home))
    try:
        if clashes := _other_trainings(con, records):
            raise ValueError(f"{path}: {'; '.join(clashes)}: the store holds another training under the same run "
                             "id, and importing would mix the two trainings' curves. Nothing imported: import the "
                             "file into another store (--home), or train the rerun under another run_name")
        lake.retry_conflicts(lambda: _apply_all(con, list(records.values())), f"importing runs from {path}")
    finally:
        con.close()
    return len(records)


def _other_trainings(con: duckdb.DuckDBPyConnection, records: dict[str, dict]) -> list[str]:
    """The imported runs the store holds with other values at the same (step, metric), each with
    the first value that differs: a rerun from scratch under the same run id, not the run itself
    exported again or continued (storage/sql/runs.sql `select_other_trainings`)."""
    rows = [(run_id, *metric) for run_id, record in records.items() for metric in record["metrics"]]
    if not rows:
        return []
    con.register("imported_metrics", _metrics_table(rows))
    try:
        clashes = con.execute(_SQL["select_other_trainings"]).fetchall()
    finally:
        con.unregister("imported_metrics")
    return [f"run {run_id} ({n_differ} of {n_shared} shared metric values differ; the first: {metric} at step "
            f"{step} is {stored} in the store, {imported} in the file)"
            for run_id, n_differ, n_shared, step, metric, stored, imported in clashes]


def _snapshot_described(path, row: dict) -> dict:
    """An exported run's snapshot description (the catalog's params) as import_dataset's values."""
    try:
        meta = json.loads(row["dataset_params"])
        if meta["dataset_id"] != row["dataset_id"]:
            raise ValueError(f"it describes snapshot {meta['dataset_id']}")
        n_rows = sum(meta["counts"].get(split, 0) for split in ("train", "test_id", "test_ood"))
    except (ValueError, KeyError, TypeError, AttributeError) as e:
        raise ValueError(f"{path}: run {row['run_id']}'s dataset_params is not its snapshot's description "
                         f"(dataset_id {row['dataset_id']}): {e}") from e
    return {"dataset_id": meta["dataset_id"], "name": meta.get("name"), "params": row["dataset_params"],
            "clustering_id": meta.get("clustering_id"), "n_rows": n_rows}


_RUN_COLUMNS = ("run_id", "objective", "dataset_id", "config", "status", "parent_run_id", "t_mem", "t_grok",
                "grok_ratio", "grok_delay", "final_step")
EXPORT_COLUMNS = [*_RUN_COLUMNS, "run_name", "updated_at", "step", "metric", "value"]


def _write(home, run_id: str, record: dict, timeout: float) -> bool:
    run_dir = runs_dir(home) / run_id
    try:
        con = connect(store_location(home), timeout=timeout)
    except StoreLocked:
        _save_pending(run_dir, record)
        return False
    try:
        pending = _pending(run_dir)  # earlier records first, so the newest run row wins
        records = [*map(_load, pending), record]
        # On DuckLake a concurrent run's commit may conflict with this one: run it again.
        lake.retry_conflicts(lambda: _apply_all(con, records), f"recording run {run_id}")
    finally:
        con.close()
    for path in pending:
        path.unlink(missing_ok=True)
    return True


def _apply_all(con: duckdb.DuckDBPyConnection, records: list[dict]) -> None:
    con.execute("BEGIN")
    try:
        for record in records:
            _apply(con, record)
        con.execute("COMMIT")
    except BaseException:
        con.execute("ROLLBACK")
        raise


def _apply(con: duckdb.DuckDBPyConnection, record: dict) -> None:
    if run := record.get("run"):
        con.execute(_SQL["upsert_run"], [
            run["run_id"], run["name"], run["objective"], run["dataset_id"], run["config"], run["status"],
            run["parent_run_id"], run["t_mem"], run["t_grok"], run["grok_ratio"], run["grok_delay"],
            run["final_step"], run["updated_at"]])
        if run["final_step"] is not None:
            con.execute(_SQL["advance_stopped"], {k: run[k] for k in (
                "run_id", "t_mem", "t_grok", "grok_ratio", "grok_delay", "final_step")})
        run_id = run["run_id"]
        if metrics := record.get("metrics"):
            _insert(con, "metric_rows", _metrics_table([(run_id, *metric) for metric in metrics]))
        if checkpoints := record.get("checkpoints"):
            _insert(con, "checkpoint_rows", pa.table({
                "run_id": pa.array([run_id] * len(checkpoints), pa.string()),
                "step": pa.array([s for s, _ in checkpoints], pa.int32()),
                "path": pa.array([p for _, p in checkpoints], pa.string())}))
    if dataset := record.get("dataset"):
        con.execute(_SQL["import_dataset"], [dataset["dataset_id"], dataset["name"], dataset["params"],
                                             dataset["clustering_id"], dataset["n_rows"]])
    if rows := record.get("evaluations"):
        _insert(con, "evaluation_rows", pa.Table.from_pylist(rows, schema=pa.schema([
            ("run_id", pa.string()), ("step", pa.int32()), ("family", pa.string()), ("split", pa.string()),
            ("n", pa.int32()), ("accuracy", pa.float64()), ("sampler", pa.string())])))


def _metrics_table(rows: list[tuple]) -> pa.Table:
    """(run_id, step, name, value) rows as the Arrow table the metrics queries read."""
    run_ids, steps, names, values = zip(*rows, strict=True)
    return pa.table({"run_id": pa.array(run_ids, pa.string()), "step": pa.array(steps, pa.int32()),
                     "name": pa.array(names, pa.string()), "value": pa.array(values, pa.float64())})


def _insert(con: duckdb.DuckDBPyConnection, name: str, table: pa.Table) -> None:
    con.register(name, table)
    try:
        con.execute(_SQL[{"metric_rows": "insert_metrics", "checkpoint_rows": "insert_checkpoints",
                          "evaluation_rows": "insert_evaluations"}[name]])
    finally:
        con.unregister(name)


def _save_pending(run_dir: Path, record: dict) -> Path:
    folder = run_dir / PENDING_DIR
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{time.time_ns():020d}-{os.getpid()}.json"
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(record))
    os.replace(tmp, path)  # a reader of the folder never sees half a record
    return path


def _pending(run_dir: Path) -> list[Path]:
    folder = run_dir / PENDING_DIR
    return sorted(folder.glob("*.json")) if folder.exists() else []


def _run_dirs(home) -> list[Path]:
    root = runs_dir(home)
    return [p for p in root.iterdir() if p.is_dir()] if root.exists() else []


def _load(path: Path) -> dict:
    return json.loads(path.read_text())
