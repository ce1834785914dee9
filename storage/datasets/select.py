"""The trajectories a snapshot draws from: `storage/sql/select_trajectories.sql`, then the spec's
own `where` condition, run on a sandbox."""

from __future__ import annotations

import warnings
from importlib import resources

import duckdb
import pyarrow as pa

from storage.datasets.spec import SnapshotSpec
from storage.store import READ_SECONDS, StoreError, one_expression, sandbox, time_limit


def select_trajectories(con: duckdb.DuckDBPyConnection, spec: SnapshotSpec) -> pa.Table:
    """The trajectories the spec selects, as Arrow, by task and answer, then oldest first (the order
    select_trajectories.sql gives, which the `where` condition keeps)."""
    sql = resources.files("storage.sql").joinpath("select_trajectories.sql").read_text()
    params = [spec.family, spec.verified_only, spec.statuses, spec.outcomes, spec.agents,
              spec.since, spec.until]
    try:
        table = query_arrow(con, sql, params)
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
                table = query_arrow(sandbox_con, f"SELECT * FROM selected WHERE {where} ORDER BY task_id, answer::VARCHAR, trajectory_id",
                                    list(spec.where_params))
        except duckdb.Error as err:
            raise ValueError(f"bad where condition {spec.where!r} (columns: "
                             f"{', '.join(table.column_names)}): {err}") from err
        finally:
            sandbox_con.close()
    return table


def query_arrow(con: duckdb.DuckDBPyConnection, sql: str, params: list) -> pa.Table:
    """A query's result as an Arrow table."""
    # execute(), not sql(): a caller's half-fetched result (a .fetchone()) would make sql() refuse to run.
    # DuckDB warns that this copies the rows once; curation's selections are small next to that.
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Arrow output on a DB-API result")
        return con.execute(sql, params).to_arrow_table()
