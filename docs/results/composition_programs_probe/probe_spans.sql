-- docs/results/composition_programs_probe/probe.md: does a probe run's accuracy still move after it
-- memorises? Per run that memorised, its evaluations from T_mem on cut into doublings of the step count
-- (span 1: T_mem to 2 x T_mem, span 2: 2 x to 4 x, ...; grokking is placed on a log-step axis), with
-- test_id, test_ood and train accuracy averaged over each span; and a least-squares line through
-- test_id against log2(step), from T_mem on: the points of ID gained per doubling of the steps, and
-- the step at which that line would reach 95% ID, in millions of steps (an extrapolation, not a
-- measurement; '> 1,000 M' past a billion steps, none for a line that does not rise).
--   grokloop import-runs docs/results/composition_programs_probe/probe_runs.parquet
--   grokloop sql --file docs/results/composition_programs_probe/probe_spans.sql
WITH probe AS (
    SELECT run_id, t_mem FROM runs WHERE regexp_matches(run_id, '^tpp[0-9]+-wd') AND t_mem IS NOT NULL
), evals AS (
    SELECT m.run_id, m.step, m.name, m.value,
           1 + floor(log2(m.step / p.t_mem))::INTEGER AS span
    FROM metrics m JOIN probe p USING (run_id)
    WHERE m.step >= p.t_mem AND m.name IN ('train/acc', 'test_id/acc', 'test_ood/acc')
), per_span AS (
    SELECT run_id, span, min(step) AS first_step, max(step) AS last_step,
           count(*) FILTER (name = 'test_id/acc') AS evals,
           round(100 * avg(value) FILTER (name = 'test_id/acc'), 1) AS id_mean,
           round(100 * avg(value) FILTER (name = 'test_ood/acc'), 1) AS ood_mean,
           round(100 * avg(value) FILTER (name = 'train/acc'), 1) AS train_mean
    FROM evals GROUP BY run_id, span
), line AS (
    SELECT run_id, regr_slope(value, log2(step)) AS slope, regr_intercept(value, log2(step)) AS intercept
    FROM evals WHERE name = 'test_id/acc' GROUP BY run_id
), per_doubling AS (
    SELECT run_id, round(100 * slope, 2) AS id_points_per_doubling,
           CASE WHEN slope > 0 THEN pow(2, (0.95 - intercept) / slope) END AS id_95_step
    FROM line
)
SELECT s.run_id, s.span, s.first_step, s.last_step, s.evals, s.id_mean, s.ood_mean, s.train_mean,
       d.id_points_per_doubling,
       CASE WHEN d.id_95_step <= 1e9 THEN printf('%.1f M', d.id_95_step / 1e6)
            WHEN d.id_95_step > 1e9 THEN '> 1,000 M' END AS id_95_extrapolated_at
FROM per_span s JOIN per_doubling d USING (run_id)
ORDER BY s.run_id, s.span;
