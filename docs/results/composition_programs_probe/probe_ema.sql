-- docs/results/composition_programs_probe/probe.md: does the Grokfast-EMA filter speed up a probe
-- setting? Each run with the filter beside its twin without it: the same world, weight decay, lr and
-- seed (the same init and batch order: the filter draws no random numbers; the longest twin where there
-- are two), at the steps both evaluated, up to the step every filtered run of the setting reached. Cut
-- into doublings of the step count from 1,000 (1,000-1,999, 2,000-3,999, ...): test_id and test_ood
-- averaged over each span, per seed (unfiltered, filtered, and the gain: filter minus none, in points of
-- the task's verifier), then mean ± std over the seeds (n).
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
    SELECT e.run_id AS ema_run, n.run_id AS none_run, e.seed, e.tasks_per_program, e.weight_decay, e.lr,
           min(e.last_step) OVER (PARTITION BY e.tasks_per_program, e.weight_decay, e.lr) AS common_step
    FROM probe e JOIN probe n USING (tasks_per_program, weight_decay, lr, seed)
    WHERE e.grokfast = 'ema' AND n.grokfast = 'none'
    QUALIFY row_number() OVER (PARTITION BY e.run_id ORDER BY n.last_step DESC, n.run_id) = 1
), evals AS (
    SELECT p.seed, p.tasks_per_program, p.weight_decay, p.lr, m.step, m.name,
           floor(log2(m.step / 1000))::INTEGER AS span,
           max(m.value) FILTER (m.run_id = p.ema_run) AS ema,
           max(m.value) FILTER (m.run_id = p.none_run) AS none
    FROM pairs p JOIN metrics m ON m.run_id IN (p.ema_run, p.none_run)
    WHERE m.step >= 1000 AND m.step <= p.common_step AND m.name IN ('test_id/acc', 'test_ood/acc')
    GROUP BY ALL
    HAVING count(*) = 2  -- a step both runs evaluated
), per_seed AS (
    SELECT tasks_per_program, weight_decay, lr, span, seed, min(step) AS first_step, max(step) AS last_step,
           100 * avg(none) FILTER (name = 'test_id/acc') AS id_none,
           100 * avg(ema) FILTER (name = 'test_id/acc') AS id_ema,
           100 * avg(none) FILTER (name = 'test_ood/acc') AS ood_none,
           100 * avg(ema) FILTER (name = 'test_ood/acc') AS ood_ema
    FROM evals GROUP BY tasks_per_program, weight_decay, lr, span, seed
), rows AS (
    SELECT tasks_per_program, weight_decay, lr, span, first_step, last_step, seed::VARCHAR AS seed, 1 AS n,
           printf('%.1f', id_none) AS id_none, printf('%.1f', id_ema) AS id_ema,
           printf('%+.1f', id_ema - id_none) AS id_gain,
           printf('%.1f', ood_none) AS ood_none, printf('%.1f', ood_ema) AS ood_ema,
           printf('%+.1f', ood_ema - ood_none) AS ood_gain
    FROM per_seed
    UNION ALL
    SELECT tasks_per_program, weight_decay, lr, span, min(first_step), max(last_step), 'mean ± std', count(*),
           printf('%.1f ± %.1f', avg(id_none), stddev_samp(id_none)),
           printf('%.1f ± %.1f', avg(id_ema), stddev_samp(id_ema)),
           printf('%+.1f ± %.1f', avg(id_ema - id_none), stddev_samp(id_ema - id_none)),
           printf('%.1f ± %.1f', avg(ood_none), stddev_samp(ood_none)),
           printf('%.1f ± %.1f', avg(ood_ema), stddev_samp(ood_ema)),
           printf('%+.1f ± %.1f', avg(ood_ema - ood_none), stddev_samp(ood_ema - ood_none))
    FROM per_seed GROUP BY tasks_per_program, weight_decay, lr, span
)
SELECT tasks_per_program, weight_decay, lr, printf('%,d-%,d', first_step, last_step) AS steps, seed, n,
       id_none, id_ema, id_gain, ood_none, ood_ema, ood_gain
FROM rows
ORDER BY tasks_per_program, weight_decay, lr DESC, span, seed = 'mean ± std', seed;
