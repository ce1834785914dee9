-- docs/results/clusters_beta2/README.md: the balanced clusters runs of one snapshot (670a14b9) trained with
-- Adam's beta2 at 0.95, 0.98 (the recipe's, ../clusters_held/) and 0.999 (PyTorch's default), seed for seed
-- (same rows, init and data order). Per run: T_mem, T_grok, the evaluation from which test ID held 95% to
-- the end (t_grok_held), where the run stopped and its test ID there; `collapse_at`, the first evaluation
-- after T_mem with train accuracy below 10% (chance is 1/47); the lowest train accuracy after T_mem; and how
-- many evaluations after T_grok had test ID below 80%. Then per beta2: runs, how many held, how many
-- collapsed, T_mem and T_grok (mean ± std over the runs that have one, n). From the training store, or:
--   grokloop import-runs docs/results/clusters_held/clusters_runs.parquet
--   grokloop import-runs docs/results/clusters_beta2/beta2_0.95/clusters_runs.parquet
--   grokloop import-runs docs/results/clusters_beta2/beta2_0.999/clusters_runs.parquet
--   grokloop sql --format markdown --file docs/results/clusters_beta2/beta2.sql
WITH arm AS (
    SELECT run_id, (config->'betas'->>1)::DOUBLE AS beta2, (config->>'seed')::INTEGER AS seed
    FROM runs
    WHERE regexp_matches(run_id, '^clusters-balanced-(betas[0-9.]+-)?s[0-9]+-670a14b9$') AND status = 'finished'
), per_run AS (
    SELECT a.beta2, a.seed, p.t_mem, p.t_grok, p.t_grok_held, p.step, p.test_id_acc,
           (SELECT min(step) FROM metrics m WHERE m.run_id = a.run_id AND m.name = 'train/acc'
              AND m.step > p.t_mem AND m.value < 0.10)                                  AS collapse_at,
           (SELECT min(value) FROM metrics m WHERE m.run_id = a.run_id AND m.name = 'train/acc'
              AND m.step > p.t_mem)                                                     AS train_low,
           (SELECT count(*) FROM metrics m WHERE m.run_id = a.run_id AND m.name = 'test_id/acc'
              AND m.step > p.t_grok AND m.value < 0.80)                                 AS evals_below_80
    FROM arm a JOIN run_progress p USING (run_id)
)
SELECT printf('%.3f', beta2) AS beta2, seed::VARCHAR AS seed, t_mem::VARCHAR AS t_mem, t_grok::VARCHAR AS t_grok,
       coalesce(t_grok_held::VARCHAR, '—') AS t_grok_held, printf('%.3f @ %d', test_id_acc, step) AS stop,
       coalesce(collapse_at::VARCHAR, '—') AS collapse_at, printf('%.3f', train_low) AS train_low_after_t_mem,
       evals_below_80::VARCHAR AS evals_below_80_after_t_grok
FROM per_run
UNION ALL
SELECT printf('%.3f', beta2), printf('all (n=%d)', count(*)),
       printf('%.0f ± %.0f', avg(t_mem), coalesce(stddev_samp(t_mem), 0)),
       printf('%.0f ± %.0f (n=%d)', avg(t_grok), coalesce(stddev_samp(t_grok), 0), count(t_grok)),
       printf('%d/%d held', count(t_grok_held), count(*)),
       printf('%.3f ± %.3f', avg(test_id_acc), coalesce(stddev_samp(test_id_acc), 0)),
       printf('%d/%d collapsed', count(collapse_at), count(*)),
       printf('%.3f ± %.3f', avg(train_low), coalesce(stddev_samp(train_low), 0)),
       printf('%.1f ± %.1f', avg(evals_below_80), coalesce(stddev_samp(evals_below_80), 0))
FROM per_run GROUP BY beta2
ORDER BY beta2, seed;
