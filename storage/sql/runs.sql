-- A training run's records (storage/runs.py runs these blocks; `?` or `$name` parameters, or the Arrow
-- tables it registers: metric_rows(run_id, step, name, value), checkpoint_rows(run_id, step, path),
-- evaluation_rows(run_id, step, family, split, n, accuracy, sampler)).

-- name: upsert_run
-- `updated_at` is when the record was made, not when it reached the store: a record that waited
-- as a file (the store was busy) never replaces a newer one (but see `advance_stopped`). MERGE, not
-- INSERT ... ON CONFLICT: it needs no primary key, so the same statement runs on DuckLake
-- (storage/lake.py), which allows one UPDATE action in it.
MERGE INTO runs USING (
    SELECT ?::VARCHAR AS run_id, ?::VARCHAR AS name, ?::VARCHAR AS objective, ?::VARCHAR AS dataset_id,
           ?::JSON AS config, ?::VARCHAR AS status, ?::VARCHAR AS parent_run_id, ?::INTEGER AS t_mem,
           ?::INTEGER AS t_grok, ?::DOUBLE AS grok_ratio, ?::INTEGER AS grok_delay,
           ?::INTEGER AS final_step, ?::TIMESTAMP AS updated_at
) AS r ON runs.run_id = r.run_id
WHEN MATCHED AND r.updated_at >= runs.updated_at THEN UPDATE SET config = r.config, status = r.status,
    t_mem = r.t_mem, t_grok = r.t_grok, grok_ratio = r.grok_ratio, grok_delay = r.grok_delay,
    final_step = r.final_step, updated_at = r.updated_at
WHEN NOT MATCHED THEN INSERT BY NAME;

-- name: advance_stopped
-- After `upsert_run`: a run recorded `stopped` (`mark_stopped`, or by hand) by someone who could not
-- see a record still waiting as a file takes that record's later step and T_mem / T_grok, and stays
-- stopped. A no-op for any other run, and for the run's own stop (its step is the record's).
UPDATE runs SET t_mem = $t_mem, t_grok = $t_grok, grok_ratio = $grok_ratio, grok_delay = $grok_delay,
    final_step = $final_step
WHERE run_id = $run_id AND status = 'stopped' AND coalesce(final_step, -1) < $final_step;

-- name: insert_metrics
MERGE INTO metrics USING metric_rows AS r
ON metrics.run_id = r.run_id AND metrics.step = r.step AND metrics.name = r.name
WHEN MATCHED THEN UPDATE SET value = r.value
WHEN NOT MATCHED THEN INSERT BY NAME;

-- name: insert_checkpoints
MERGE INTO checkpoints USING checkpoint_rows AS r ON checkpoints.run_id = r.run_id AND checkpoints.step = r.step
WHEN MATCHED THEN UPDATE SET path = r.path
WHEN NOT MATCHED THEN INSERT BY NAME;

-- name: insert_evaluations
MERGE INTO evaluations USING evaluation_rows AS r
ON evaluations.run_id = r.run_id AND evaluations.step = r.step AND evaluations.family = r.family
   AND evaluations.split = r.split
WHEN MATCHED THEN UPDATE SET n = r.n, accuracy = r.accuracy, sampler = r.sampler
WHEN NOT MATCHED THEN INSERT BY NAME;

-- name: select_other_trainings
-- The runs of an import (imported_metrics(run_id, step, name, value)) that the store holds with another
-- value at the same (step, metric): another training under the same run id (a rerun from scratch), whose
-- metrics an upsert would mix into the stored one's curve. A run continued (`--resume`) and exported again
-- carries the values it had, so it is not one; `step_time` is wall time, which a stretch trained again
-- after a stop records anew, so it is not compared. A row per such run: the values that differ, the
-- values both hold, and the first that differs (by step, then metric).
SELECT run_id, count(*) FILTER (WHERE differs) AS n_differ, count(*) AS n_shared,
       arg_min(step, (step, name)) FILTER (WHERE differs) AS step,
       arg_min(name, (step, name)) FILTER (WHERE differs) AS metric,
       arg_min(stored, (step, name)) FILTER (WHERE differs) AS stored,
       arg_min(imported, (step, name)) FILTER (WHERE differs) AS imported
FROM (SELECT run_id, step, name, m.value AS stored, i.value AS imported,
             i.value IS DISTINCT FROM m.value AS differs
      FROM imported_metrics i JOIN metrics m USING (run_id, step, name)
      WHERE name <> 'step_time')
GROUP BY run_id HAVING n_differ > 0
ORDER BY run_id;

-- name: select_last_step
SELECT max(step) FROM metrics WHERE run_id = ?;

-- name: select_metrics
SELECT name, value FROM metrics WHERE run_id = ? AND step = ?;

-- name: match_runs
-- The run ids a glob pattern matches (`*`, `?`, `[...]`: DuckDB's GLOB, case-sensitive), in order.
SELECT run_id FROM runs WHERE run_id GLOB ? ORDER BY run_id;

-- name: export_runs
-- Runs as they ship beside a results page (docs/results/<name>_runs.parquet): one row per
-- (run, step, metric), each carrying its run's row, so the file alone replots and re-reports
-- the runs (`import_runs` puts them back in a store). A run with no metric yet is one row of NULLs.
-- `dataset_params`: the run's snapshot as the catalog describes it (name, spec, rows per split and
-- cluster; not its rows), which a report groups and counts runs by.
SELECT r.run_id, r.name AS run_name, r.objective, r.dataset_id, r.config::VARCHAR AS config, r.status,
       r.parent_run_id, r.t_mem, r.t_grok, r.grok_ratio, r.grok_delay, r.final_step, r.updated_at,
       m.step, m.name AS metric, m.value, d.params::VARCHAR AS dataset_params
FROM runs r LEFT JOIN metrics m USING (run_id) LEFT JOIN datasets d ON d.dataset_id = r.dataset_id
WHERE r.run_id IN (SELECT unnest(?::VARCHAR[]))
ORDER BY r.run_id, m.name, m.step;

-- name: select_trained_on
-- Where these runs trained (the `trained_on` a run row's config carries: torch, device, threads)
-- and how many of them did; NULL for runs recorded before rows carried it.
SELECT (config->'trained_on')::VARCHAR AS trained_on, count(*) AS runs
FROM runs WHERE run_id IN (SELECT unnest(?::VARCHAR[]))
GROUP BY ALL ORDER BY runs DESC, trained_on;

-- name: import_dataset
-- An imported run's snapshot, described (no rows: `dataset show` names it, nothing trains on it);
-- a snapshot the store already has stays as it is.
INSERT INTO datasets (dataset_id, name, params, clustering_id, n_rows, export_path)
SELECT $1, $2, $3, $4, $5, NULL WHERE NOT EXISTS (FROM datasets WHERE dataset_id = $1);

-- name: select_quiet_running
-- Runs recorded `running` with no record since a time (naive UTC, as `updated_at`): a run writes at
-- least at each checkpoint (every `checkpoint_minutes`), so these are likely runs whose process is gone.
SELECT run_id, updated_at FROM runs WHERE status = 'running' AND updated_at < ?::TIMESTAMP ORDER BY updated_at, run_id;

-- name: select_running
SELECT run_id FROM runs WHERE run_id IN (SELECT unnest(?::VARCHAR[])) AND status = 'running' ORDER BY run_id;

-- name: mark_stopped
-- Runs left `running` by a command that ended early (their workers killed with it) recorded as
-- stopped, at the step they were recorded at. A worker that outlived the command writes a newer
-- row (`updated_at`) and wins, as any later record does. (No RETURNING: DuckLake has none for UPDATE.)
UPDATE runs SET status = 'stopped', updated_at = ?::TIMESTAMP
WHERE run_id IN (SELECT unnest(?::VARCHAR[])) AND status = 'running';
