-- docs/results/composition_programs_probe/probe.md: does the Grokfast-EMA filter speed up a probe
-- run? Each run with the filter beside the run without it on the same world, weight decay, lr and seed
-- (the same init and batch order: the filter draws no random numbers; the longest such run where there
-- are two), at the steps both evaluated, up to the filtered run's last evaluation: cut into doublings of
-- the step count from 1,000 (1,000-1,999, 2,000-3,999, ...), with train, test_id and test_ood accuracy
-- averaged over each span for both and the gain (filter minus none, in points; the task's verifier).
--   grokloop import-runs docs/results/composition_programs_probe/probe_runs.parquet
--   grokloop sql --file docs/results/composition_programs_probe/probe_ema.sql
WITH probe AS (
    SELECT r.run_id,
           CAST(json_extract(r.config, '$.family_params.train_per_program') AS INTEGER) AS tasks_per_program,
           CAST(json_extract(r.config, '$.weight_decay') AS DOUBLE) AS weight_decay,
           CAST(json_extract(r.config, '$.lr') AS DOUBLE) AS lr,
           json_extract_string(r.config, '$.grokfast') AS grokfast,
           CAST(json_extract(r.config, '$.seed') AS INTEGER) AS seed,
           max(m.step) AS last_step
    FROM runs r JOIN metrics m USING (run_id)
    WHERE regexp_matches(r.run_id, '^tpp[0-9]+-wd')
    GROUP BY ALL
), pairs AS (
    SELECT e.run_id AS ema_run, n.run_id AS none_run, e.seed, e.last_step
    FROM probe e JOIN probe n USING (tasks_per_program, weight_decay, lr, seed)
    WHERE e.grokfast = 'ema' AND n.grokfast = 'none'
    QUALIFY row_number() OVER (PARTITION BY e.run_id ORDER BY n.last_step DESC, n.run_id) = 1
), evals AS (
    SELECT p.ema_run, p.none_run, p.seed, m.step, m.name,
           floor(log2(m.step / 1000))::INTEGER AS span,
           max(m.value) FILTER (m.run_id = p.ema_run) AS ema,
           max(m.value) FILTER (m.run_id = p.none_run) AS none
    FROM pairs p JOIN metrics m ON m.run_id IN (p.ema_run, p.none_run)
    WHERE m.step >= 1000 AND m.step <= p.last_step
      AND m.name IN ('train/acc', 'test_id/acc', 'test_ood/acc')
    GROUP BY ALL
    HAVING count(*) = 2  -- a step both runs evaluated
)
SELECT ema_run, none_run, seed,
       printf('%,d-%,d', 1000 * pow(2, span)::INTEGER, least(1000 * pow(2, span + 1)::INTEGER - 1, max(step))) AS steps,
       count(*) FILTER (name = 'test_id/acc') AS evals,
       round(100 * avg(none) FILTER (name = 'train/acc'), 1) AS train_none,
       round(100 * avg(ema) FILTER (name = 'train/acc'), 1) AS train_ema,
       round(100 * avg(none) FILTER (name = 'test_id/acc'), 1) AS id_none,
       round(100 * avg(ema) FILTER (name = 'test_id/acc'), 1) AS id_ema,
       round(100 * avg(ema - none) FILTER (name = 'test_id/acc'), 1) AS id_gain,
       round(100 * avg(none) FILTER (name = 'test_ood/acc'), 1) AS ood_none,
       round(100 * avg(ema) FILTER (name = 'test_ood/acc'), 1) AS ood_ema,
       round(100 * avg(ema - none) FILTER (name = 'test_ood/acc'), 1) AS ood_gain
FROM evals
GROUP BY ema_run, none_run, seed, span
ORDER BY seed, ema_run, span;
