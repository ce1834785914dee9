"""Export trajectories in grokloop's own JSONL records (agents/sdk.py wire format).

The inverse of ingest: a trajectory record, its steps in order, then its outcome (none for an
incomplete trajectory), so `grokloop ingest` of the file into another store gives the same rows.
The records are built in SQL (`to_json` of a struct) and written in one go.
"""

from __future__ import annotations

from pathlib import Path

import duckdb
import pyarrow as pa

from storage.store import StoreError, one_expression

_TIME = "%Y-%m-%dT%H:%M:%S.%fZ"

_RECORDS_SQL = """
WITH t AS (SELECT * FROM trajectories {where})
SELECT rec FROM (
    SELECT t.trajectory_id, 0 AS part, 0 AS idx, to_json({{
        'v': 1, 'type': 'trajectory', 'trajectory_id': t.trajectory_id::VARCHAR,
        'agent': {{'name': a.name, 'version': a.version, 'kind': a.kind, 'checkpoint': a.checkpoint}},
        'task': {{'family': t.family, 'task_id': t.task_id, 'split': k.split, 'operation': k.operation,
                 'difficulty': k.difficulty, 'spec': k.spec}},
        'tags': t.tags, 'metadata': t.metadata, 'start_time': strftime(t.start_time, '{time}'),
        'model': t.model}}) AS rec
    FROM t JOIN agents a USING (agent_id) LEFT JOIN tasks k USING (task_id)
    UNION ALL
    SELECT s.trajectory_id, 1, s.idx, to_json({{
        'v': 1, 'type': 'step', 'trajectory_id': s.trajectory_id::VARCHAR, 'index': s.idx,
        'kind': s.kind, 'observation': s.observation, 'tool_name': s.tool_name,
        'arguments': s.arguments, 'result': s.result, 'reward': s.reward, 'status': s.status,
        'error': s.error, 'metadata': s.metadata, 'start_time': strftime(s.start_time, '{time}'),
        'end_time': strftime(s.end_time, '{time}'), 'model': s.model, 'input_tokens': s.input_tokens,
        'output_tokens': s.output_tokens, 'cost_usd': s.cost_usd, 'call_id': s.call_id, 'turn': s.turn}})
    FROM steps s SEMI JOIN t USING (trajectory_id)
    UNION ALL
    SELECT t.trajectory_id, 2, 0, to_json({{
        'v': 1, 'type': 'outcome', 'trajectory_id': t.trajectory_id::VARCHAR, 'status': t.status,
        'answer': t.answer, 'verified': t.verified, 'reward': t.reward, 'error': t.error,
        'n_steps': t.n_steps, 'end_time': strftime(t.end_time, '{time}')}})
    FROM t WHERE t.status <> 'incomplete'
)
ORDER BY trajectory_id, part, idx
"""


def export_jsonl(con: duckdb.DuckDBPyConnection, out: Path, where: str | None = None) -> int:
    """Write trajectories (all, or those matching the SQL condition `where` over the trajectories
    table) to `out` as grokloop JSONL records. Returns how many trajectories."""
    clause = f"WHERE {one_expression(where)}" if where else ""
    try:
        n = con.sql(f"SELECT count(*) FROM trajectories {clause}").fetchall()[0][0]
        records = con.sql(_RECORDS_SQL.format(where=clause, time=_TIME)).to_arrow_table().column("rec")
    except duckdb.Error as err:
        raise StoreError(f"JSONL export failed (check --where {where!r}): {err}") from err
    Path(out).write_text("".join(f"{line}\n" for line in records.cast(pa.string()).to_pylist()))
    return n
