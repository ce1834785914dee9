-- docs/results/clusters_clip/clusters.md, "Later still": the clip grid's runs continued past its
-- 20,000-step cap (1%: 10 of x-y's 1,049 rows back, to 50,000 steps). Per run, x-y's best test accuracy in
-- three windows: to 5,000 (about when the balanced runs grok), to 20,000 (the grid's cap) and after it;
-- the first evaluation at 95% (groks_at), and where it ended. Then the mean ± std over the runs (n).
-- Late generalisation would show as a best after 20,000 well above the ones before (chance: 1/47 = 0.021).
-- From the store the runs were trained in, or from the page's Parquet:
--   grokloop import-runs docs/results/clusters_clip/clusters_runs.parquet
--   grokloop sql --file docs/results/clusters_clip/late.sql
WITH x_y AS (
    SELECT run_id, step, value FROM metrics
    WHERE name = 'test_id/cluster:x-y/acc' AND regexp_matches(run_id, '^clusters-[a-z0-9]+-grad_clip1\.0-s[0-9]-[0-9a-f]+$')
), per_run AS (
    SELECT regexp_extract(run_id, '^clusters-([a-z0-9]+)-', 1) AS variant,
           regexp_extract(run_id, '-s([0-9])-[0-9a-f]+$', 1) AS seed,
           max(value) FILTER (step <= 5000) AS best_to_5000,
           max(value) FILTER (step > 5000 AND step <= 20000) AS best_to_20000,
           max(value) FILTER (step > 20000) AS best_after_20000,
           min(step) FILTER (value >= 0.95) AS groks_at,
           arg_max(value, step) AS end_acc, max(step) AS end_step
    FROM x_y GROUP BY run_id
    HAVING max(step) > 20000
)
SELECT variant, seed, printf('%.3f', best_to_5000) AS best_to_5000, printf('%.3f', best_to_20000) AS best_to_20000,
       printf('%.3f', best_after_20000) AS best_after_20000, groks_at::VARCHAR AS groks_at,
       printf('%.3f @ %d', end_acc, end_step) AS "end"
FROM per_run
UNION ALL
SELECT variant, printf('mean ± std (n=%d)', count(*)),
       printf('%.3f ± %.3f', avg(best_to_5000), coalesce(stddev_samp(best_to_5000), 0)),
       printf('%.3f ± %.3f', avg(best_to_20000), coalesce(stddev_samp(best_to_20000), 0)),
       printf('%.3f ± %.3f', avg(best_after_20000), coalesce(stddev_samp(best_after_20000), 0)),
       printf('%d/%d reach 95%%', count(groks_at), count(*)),
       printf('%.3f ± %.3f', avg(end_acc), coalesce(stddev_samp(end_acc), 0))
FROM per_run GROUP BY variant
ORDER BY variant, seed;
