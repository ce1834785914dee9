-- A training run's records (storage/runs.py runs these blocks; `?` parameters, or the Arrow
-- tables it registers: metric_rows(run_id, step, name, value), checkpoint_rows(run_id, step, path),
-- evaluation_rows(run_id, step, family, split, n, accuracy, sampler)).

-- name: upsert_run
-- `updated_at` is when the record was made, not when it reached the store: a record that waited
-- as a file (the store was busy) never replaces a newer one.
INSERT INTO runs (run_id, name, objective, dataset_id, config, status, parent_run_id, t_mem, t_grok,
                  grok_ratio, grok_delay, final_step, updated_at)
VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
ON CONFLICT (run_id) DO UPDATE SET config = excluded.config, status = excluded.status,
    t_mem = excluded.t_mem, t_grok = excluded.t_grok, grok_ratio = excluded.grok_ratio,
    grok_delay = excluded.grok_delay, final_step = excluded.final_step, updated_at = excluded.updated_at
WHERE excluded.updated_at >= runs.updated_at;

-- name: insert_metrics
INSERT OR REPLACE INTO metrics BY NAME SELECT * FROM metric_rows;

-- name: insert_checkpoints
INSERT OR REPLACE INTO checkpoints BY NAME SELECT * FROM checkpoint_rows;

-- name: insert_evaluations
INSERT OR REPLACE INTO evaluations BY NAME SELECT * FROM evaluation_rows;

-- name: select_metrics
SELECT name, value FROM metrics WHERE run_id = ? AND step = ?;
