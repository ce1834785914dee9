-- Views for the common questions. Recreated every time a writer opens the store.

CREATE OR REPLACE VIEW success_rate AS
SELECT family, agent_id,
       count(*)                                         AS trajectories,
       count(*) FILTER (WHERE verified)                 AS verified,
       round(avg(CASE WHEN verified THEN 1.0 ELSE 0.0 END), 4) AS success_rate,
       count(*) FILTER (WHERE status = 'error')         AS errors,
       count(*) FILTER (WHERE status = 'incomplete')    AS incomplete
FROM trajectories
GROUP BY family, agent_id
ORDER BY family, agent_id;

-- Curation: how big each cluster of each clustering is (the train pool it was fitted on), per family.
CREATE OR REPLACE VIEW cluster_sizes AS
SELECT a.clustering_id, c.method, t.family, a.cluster, count(*) AS rows
FROM cluster_assignments a
JOIN clusterings c USING (clustering_id)
JOIN trajectories t USING (trajectory_id)
GROUP BY ALL
ORDER BY a.clustering_id, a.cluster;

-- Per snapshot, split and cluster: rows before curation (train: the pool before dedup, balancing and
-- hold-out; test splits are never balanced, so before = after) and rows in the snapshot.
-- A held-out cluster shows with rows_after = 0.
CREATE OR REPLACE VIEW dataset_cluster_sizes AS
WITH before AS (
    SELECT d.dataset_id, d.params->>'family' AS family, 'train' AS split, a.cluster, count(*) AS rows_before
    FROM datasets d JOIN cluster_assignments a ON a.clustering_id = d.clustering_id
    GROUP BY ALL
), after AS (
    SELECT dataset_id, family, split, cluster, count(*) AS rows_after
    FROM dataset_rows
    GROUP BY ALL
)
SELECT dataset_id, family, split, cluster,
       coalesce(rows_before, rows_after) AS rows_before,
       coalesce(rows_after, 0)           AS rows_after
FROM before FULL OUTER JOIN after USING (dataset_id, family, split, cluster)
ORDER BY dataset_id, split, cluster;

-- Store: steps per task family and agent -- how long trajectories are, and how many steps failed.
CREATE OR REPLACE VIEW step_counts AS
SELECT t.family, t.agent_id,
       count(DISTINCT t.trajectory_id)                  AS trajectories,
       count(s.idx)                                     AS steps,
       round(count(s.idx) / count(DISTINCT t.trajectory_id), 2) AS steps_per_trajectory,
       count(s.idx) FILTER (WHERE s.status = 'error')   AS error_steps,
       count(DISTINCT s.tool_name)                      AS tools
FROM trajectories t
LEFT JOIN steps s USING (trajectory_id)
GROUP BY t.family, t.agent_id
ORDER BY t.family, t.agent_id;

-- Store: the most recent trajectories first, with their agent, task, outcome and step count.
CREATE OR REPLACE VIEW recent_trajectories AS
SELECT t.trajectory_id, t.start_time, t.end_time, t.agent_id, t.family, t.task_id,
       k.split, k.operation, k.difficulty, t.status, t.verified, t.reward, t.n_steps,
       (SELECT count(*) FROM steps s WHERE s.trajectory_id = t.trajectory_id) AS steps_stored,
       t.error, t.tags, t.source
FROM trajectories t
LEFT JOIN tasks k USING (task_id)
ORDER BY t.start_time DESC NULLS LAST, t.trajectory_id DESC;

-- Store: per ingest format and day, what came in and what was quarantined.
CREATE OR REPLACE VIEW ingest_summary AS
SELECT date_trunc('day', ingested_at)::DATE AS day, format,
       count(*)               AS segments,
       sum(n_records)         AS records,
       sum(n_trajectories)    AS trajectories,
       sum(n_steps)           AS steps,
       sum(n_quarantined)     AS quarantined
FROM ingest_log
GROUP BY ALL
ORDER BY day DESC, format;

-- Store: quarantined records per reason (its fixed part, before a ':'), with an example source.
CREATE OR REPLACE VIEW quarantine_summary AS
SELECT split_part(reason, ':', 1)  AS reason,
       count(*)                    AS records,
       count(DISTINCT source)      AS sources,
       min(ingested_at)            AS first_seen,
       max(ingested_at)            AS last_seen,
       any_value(source)           AS example_source
FROM quarantine
GROUP BY 1
ORDER BY records DESC;

-- Store: tokens, cost, calls and step latency per agent x model x day. A step's model is its own
-- (an LLM call's), else its trajectory's; tool-call steps without a model of their own count under
-- the trajectory's model. Latency is end_time - start_time of a step, in milliseconds.
CREATE OR REPLACE VIEW usage AS
SELECT t.agent_id,
       coalesce(s.model, t.model)                                        AS model,
       date_trunc('day', coalesce(s.start_time, t.start_time))::DATE     AS day,
       count(DISTINCT s.trajectory_id)                                   AS trajectories,
       count(*)                                                          AS calls,
       count(*) FILTER (WHERE s.input_tokens IS NOT NULL OR s.output_tokens IS NOT NULL
                        OR s.cost_usd IS NOT NULL)                       AS model_calls,
       count(s.tool_name)                                                AS tool_calls,
       sum(s.input_tokens)                                               AS input_tokens,
       sum(s.output_tokens)                                              AS output_tokens,
       sum(coalesce(s.input_tokens, 0) + coalesce(s.output_tokens, 0))   AS tokens,
       sum(s.cost_usd)                                                   AS cost_usd,
       quantile_cont((epoch_us(s.end_time) - epoch_us(s.start_time)) / 1000.0, 0.5)  AS p50_latency_ms,
       quantile_cont((epoch_us(s.end_time) - epoch_us(s.start_time)) / 1000.0, 0.95) AS p95_latency_ms
FROM steps s
JOIN trajectories t USING (trajectory_id)
GROUP BY ALL
ORDER BY day DESC NULLS LAST, t.agent_id, model;

-- Runs: each run's last checkpoint -- what a model agent samples from and what a continued loop
-- starts its next round from.
CREATE OR REPLACE VIEW latest_checkpoints AS
SELECT run_id, max(step) AS step, arg_max(path, step) AS path
FROM checkpoints
GROUP BY run_id;

-- Runs: verified accuracy per run, evaluation and split, with the rows it is over and its binomial
-- standard error (whether OOD at 3% is above a chance of 2.5% is a question of n). n is NULL for
-- runs recorded before evaluations stored their counts.
CREATE OR REPLACE VIEW split_accuracy AS
SELECT a.run_id, a.step, split_part(a.name, '/', 1) AS split, a.value AS acc,
       n.value::INTEGER                               AS n,
       sqrt(a.value * (1 - a.value) / n.value)        AS stderr
FROM metrics a
LEFT JOIN metrics n ON n.run_id = a.run_id AND n.step = a.step AND n.name = split_part(a.name, '/', 1) || '/n'
WHERE a.name IN ('train/acc', 'test_id/acc', 'test_ood/acc')
ORDER BY a.run_id, a.step, split;

-- Runs: the test accuracies grokking is read from, one row per run and evaluation: test ID (`cluster`
-- NULL) and each cluster's (metric `test_id/cluster:<name>/acc`), with the run's grok_threshold
-- (`level`; 0.95 for runs recorded before it was a setting).
CREATE OR REPLACE VIEW test_accuracy AS
SELECT m.run_id, nullif(regexp_extract(m.name, '^test_id/cluster:(.*)/acc$', 1), '') AS cluster, m.step,
       m.value AS acc, coalesce(TRY_CAST(r.config->>'grok_threshold' AS DOUBLE), 0.95) AS level
FROM metrics m
LEFT JOIN runs r USING (run_id)
WHERE m.name = 'test_id/acc' OR m.name LIKE 'test_id/cluster:%/acc';

-- Runs: each cluster's test accuracy at each evaluation beside `others_acc`, the lowest of the run's
-- other clusters there (NULL where one of them was not measured), and the run's grok_threshold (`level`).
CREATE OR REPLACE VIEW cluster_curves AS
WITH curve AS (
    SELECT * FROM test_accuracy WHERE cluster IS NOT NULL
), cluster_count AS (
    SELECT run_id, count(DISTINCT cluster) AS n FROM curve GROUP BY run_id
)
SELECT a.run_id, a.cluster, a.step, a.acc,
       CASE WHEN count(b.acc) = any_value(k.n) - 1 THEN min(b.acc) END AS others_acc, a.level
FROM curve a
JOIN cluster_count k USING (run_id)
LEFT JOIN curve b ON b.run_id = a.run_id AND b.step = a.step AND b.cluster <> a.cluster
GROUP BY a.run_id, a.cluster, a.step, a.acc, a.level
ORDER BY a.run_id, a.cluster, a.step;

-- Runs: the curves grokking is read from, one row per run, curve and evaluation: the run's test ID
-- accuracy (`curve` 'test_id'), each cluster's ('cluster', `cluster` its name) and the lowest of the
-- run's other clusters beside it ('others'), with the run's grok_threshold (`level`).
CREATE OR REPLACE VIEW accuracy_curves AS
SELECT run_id, 'test_id' AS curve, cluster, step, acc, level FROM test_accuracy WHERE cluster IS NULL
UNION ALL
SELECT run_id, 'cluster', cluster, step, acc, level FROM cluster_curves
UNION ALL
SELECT run_id, 'others', cluster, step, others_acc, level FROM cluster_curves WHERE others_acc IS NOT NULL;

-- Runs: per run and curve (over `accuracy_curves`), when it first reached the run's grok_threshold
-- (`groks_at`: the trainer's T_grok on 'test_id'), the first evaluation from which every later one
-- stayed there (`held_from`: NULL while the last is below; a first crossing on a plateau that scatters
-- around the threshold is not a transition), the share of the evaluations from `groks_at` on still
-- there (`kept`), the lowest it fell to after, its best, and where it ended.
CREATE OR REPLACE VIEW curve_grokking AS
WITH marked AS (
    SELECT *, min(step) FILTER (WHERE acc >= level) OVER curve AS groks_at,
              max(step) FILTER (WHERE acc < level) OVER curve  AS last_below
    FROM accuracy_curves
    WINDOW curve AS (PARTITION BY run_id, curve, cluster)
)
SELECT run_id, curve, cluster, groks_at,
       min(step) FILTER (WHERE step > coalesce(last_below, -1))   AS held_from,
       avg((acc >= level)::INTEGER) FILTER (WHERE step >= groks_at) AS kept,
       min(acc) FILTER (WHERE step >= groks_at)                    AS lowest_after,
       max(acc) AS best, arg_max(acc, step) AS final_acc, max(step) AS last_step, count(*) AS evals
FROM marked
GROUP BY run_id, curve, cluster, groks_at, last_below
ORDER BY run_id, curve, cluster;

-- Runs: per run and cluster (its `test_id/cluster:<name>/acc`), `curve_grokking`'s marks for it, and
-- `others_*` the same for the run's other clusters as one curve (`others_acc`): did the rest grok
-- beside it, and hold.
CREATE OR REPLACE VIEW cluster_grokking AS
SELECT s.* EXCLUDE (curve),
       o.groks_at AS others_groks_at, o.held_from AS others_held_from, o.kept AS others_kept,
       o.lowest_after AS others_lowest_after
FROM curve_grokking s
LEFT JOIN curve_grokking o ON o.run_id = s.run_id AND o.cluster = s.cluster AND o.curve = 'others'
WHERE s.curve = 'cluster'
ORDER BY s.run_id, s.cluster;

-- Runs: where each run is -- its latest evaluation's verified accuracy per split, T_mem, T_grok (the
-- first evaluation at the grok threshold), the evaluation from which test ID accuracy has stayed there
-- (`t_grok_held`, NULL while the latest is below) and the share of evaluations since T_grok there
-- (`kept`). What a long run shows while it goes on (`grokloop sql "SELECT * FROM run_progress"`).
CREATE OR REPLACE VIEW run_progress AS
WITH latest AS (
    SELECT run_id, max(step) AS step FROM metrics WHERE name = 'test_id/acc' GROUP BY run_id
)
SELECT r.run_id, r.objective, r.status, l.step, r.t_mem, r.t_grok, g.held_from AS t_grok_held, g.kept,
       max(m.value) FILTER (WHERE m.name = 'train/acc')    AS train_acc,
       max(m.value) FILTER (WHERE m.name = 'test_id/acc')  AS test_id_acc,
       max(m.value) FILTER (WHERE m.name = 'test_ood/acc') AS test_ood_acc,
       r.updated_at
FROM runs r
LEFT JOIN latest l USING (run_id)
LEFT JOIN metrics m ON m.run_id = r.run_id AND m.step = l.step
LEFT JOIN curve_grokking g ON g.run_id = r.run_id AND g.curve = 'test_id'
GROUP BY ALL
ORDER BY r.updated_at DESC, r.run_id;
