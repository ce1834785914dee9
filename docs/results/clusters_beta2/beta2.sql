-- docs/results/clusters_beta2/README.md: the balanced clusters runs of one snapshot (670a14b9) with Adam's
-- beta2 at 0.95, 0.98 (the recipe's: ../clusters_held/) and 0.999 (PyTorch's default), seed for seed (same
-- rows, init and data order). Per beta2 and seed: T_mem and T_grok; where the experiment's stopping rule
-- ended the run (test ID at 95% for 500 steps; `cap`: it never held that long) and its test ID there; then
-- over the whole 10,000 steps (a copy trained on with no stop, `-nostop-` in its name, where the rule ended
-- the run sooner; before that stop its curve is the stopped run's): the evaluation from which test ID held
-- 95% to the end, `collapse_at` (the first evaluation after T_mem with train accuracy below 10%; chance is
-- 1/47), the lowest train accuracy after T_mem, the lowest test ID after T_grok, how many evaluations after
-- T_grok were below 80% test ID, and test ID at step 10,000. Only steps up to the experiment's cap count (a
-- no-stop copy trained on past it is read to the cap: the same window for every arm). Last, per beta2, mean ±
-- std over seeds (n).
-- From the training store, or from the three pages' Parquets and the no-stop runs':
--   for f in docs/results/clusters_held/clusters_runs.parquet docs/results/clusters_beta2/*/*.parquet; do
--     grokloop import-runs "$f"; done
--   grokloop sql --format markdown --file docs/results/clusters_beta2/beta2.sql
WITH arm AS (
    SELECT r.run_id, (r.config->'betas'->>1)::DOUBLE AS beta2, (r.config->>'seed')::INTEGER AS seed,
           (r.config->>'patience')::INTEGER AS patience,
           (r.config->>'max_steps')::INTEGER AS cap, p.step, p.test_id_acc, p.t_mem, p.t_grok
    FROM runs r JOIN run_progress p USING (run_id)
    WHERE regexp_matches(r.run_id, '^clusters-balanced-(betas[0-9.]+-)?(nostop-)?s[0-9]+-670a14b9$')
      AND r.status = 'finished'
), per_seed AS (
    SELECT beta2, seed,
           any_value(t_mem) FILTER (WHERE patience > 0)        AS t_mem,
           any_value(t_grok) FILTER (WHERE patience > 0)       AS t_grok,
           any_value(step) FILTER (WHERE patience > 0)         AS stop_step,
           any_value(test_id_acc) FILTER (WHERE patience > 0)  AS stop_acc,
           any_value(cap) FILTER (WHERE patience > 0)          AS cap,  -- the experiment's
           arg_max(run_id, step)                               AS long_run
    FROM arm GROUP BY beta2, seed
), curve AS (  -- each seed's longest run up to the cap, test ID (with its threshold) and train accuracy
    SELECT s.*, a.curve = 'test_id' AS is_test, a.step, a.acc, a.level,
           max(a.step) FILTER (WHERE a.curve = 'test_id' AND a.acc < a.level)
               OVER (PARTITION BY s.beta2, s.seed) AS last_below
    FROM per_seed s
    JOIN (SELECT run_id, curve, step, acc, level FROM accuracy_curves WHERE curve = 'test_id'
          UNION ALL
          SELECT run_id, 'train', step, value, NULL FROM metrics WHERE name = 'train/acc') a
      ON a.run_id = s.long_run AND a.step <= s.cap
), per_run AS (
    SELECT beta2, seed, t_mem, t_grok, stop_step, stop_acc, cap,
           min(step) FILTER (WHERE is_test AND step > coalesce(last_below, -1)) AS held_from,
           min(step) FILTER (WHERE NOT is_test AND step > t_mem AND acc < 0.10) AS collapse_at,
           min(acc) FILTER (WHERE NOT is_test AND step > t_mem)                 AS train_low,
           min(acc) FILTER (WHERE is_test AND step >= t_grok)                   AS test_low,
           count(*) FILTER (WHERE is_test AND step > t_grok AND acc < 0.80)     AS below_80,
           arg_max(acc, step) FILTER (WHERE is_test)                            AS end_acc,
           max(step) FILTER (WHERE is_test)                                     AS last_step
    FROM curve
    GROUP BY beta2, seed, t_mem, t_grok, stop_step, stop_acc, cap
)
SELECT printf('%.3f', beta2) AS beta2, seed::VARCHAR AS seed, t_mem::VARCHAR AS t_mem,
       coalesce(t_grok::VARCHAR, '—') AS t_grok,
       CASE WHEN stop_step < cap THEN printf('%.3f @ %d', stop_acc, stop_step)
            ELSE printf('%.3f @ %d (cap)', stop_acc, stop_step) END AS rule_stop,
       coalesce(held_from::VARCHAR, '—') AS held_from, coalesce(collapse_at::VARCHAR, '—') AS collapse_at,
       printf('%.3f', train_low) AS train_low, coalesce(printf('%.3f', test_low), '—') AS test_low_after_t_grok,
       CASE WHEN t_grok IS NULL THEN '—' ELSE below_80::VARCHAR END AS evals_below_80,
       printf('%.3f @ %d', end_acc, last_step) AS end_acc
FROM per_run
UNION ALL
SELECT printf('%.3f', beta2), printf('all (n=%d)', count(*)),
       printf('%.0f ± %.0f', avg(t_mem), coalesce(stddev_samp(t_mem), 0)),
       printf('%.0f ± %.0f (n=%d)', avg(t_grok), coalesce(stddev_samp(t_grok), 0), count(t_grok)),
       printf('%d/%d held', count(*) FILTER (WHERE stop_step < cap), count(*)),
       printf('%d/%d held', count(held_from), count(*)),
       printf('%d/%d collapsed', count(collapse_at), count(*)),
       printf('%.3f ± %.3f', avg(train_low), coalesce(stddev_samp(train_low), 0)),
       printf('%.3f ± %.3f (n=%d)', avg(test_low), coalesce(stddev_samp(test_low), 0), count(test_low)),
       printf('%.1f ± %.1f (n=%d)', avg(below_80) FILTER (WHERE t_grok IS NOT NULL),
              coalesce(stddev_samp(below_80) FILTER (WHERE t_grok IS NOT NULL), 0), count(t_grok)),
       printf('%.3f ± %.3f', avg(end_acc), coalesce(stddev_samp(end_acc), 0))
FROM per_run GROUP BY beta2
ORDER BY beta2, seed;
