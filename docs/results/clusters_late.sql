-- docs/results/clusters.md, "Late falls": per group of runs and cluster, over seeds (n), how many
-- reached 95% test, when, the share of evaluations after still at 95% (kept), the lowest after, and
-- the test accuracy at step 20,000 (mean ± std over the runs that have it, n of them). From the store
-- the runs were trained in, or from their Parquet:
--   grokloop import-runs docs/results/clusters_late_runs.parquet
--   grokloop sql --file docs/results/clusters_late.sql
SELECT regexp_replace(run_id, '-s[0-9](-79291876)?$', '') AS runs, cluster, count(*) AS n,
       count(groks_at) AS reached_95,
       CASE WHEN count(groks_at) > 0 THEN printf('%.0f ± %.0f (n=%d)', avg(groks_at), coalesce(stddev_samp(groks_at), 0),
                                        count(groks_at)) END AS groks_at,
       CASE WHEN count(kept) > 0 THEN printf('%.3f ± %.3f (n=%d)', avg(kept), coalesce(stddev_samp(kept), 0),
                                        count(kept)) END AS kept,
       CASE WHEN count(lowest_after) > 0 THEN printf('%.3f ± %.3f (n=%d)', avg(lowest_after), coalesce(stddev_samp(lowest_after), 0),
                                        count(lowest_after)) END AS lowest_after,
       CASE WHEN count(final_acc) > 0 THEN printf('%.3f ± %.3f (n=%d)', avg(final_acc), coalesce(stddev_samp(final_acc), 0),
                                        count(final_acc)) END AS at_20000
FROM cluster_grokking
WHERE regexp_matches(run_id, '^clusters-(balanced-long|balanced-wd0\.3|heldout-lr1e-3|balanced-ema|balanced-cos|balanced-clip1|heldout-clip1)-s[0-2]$'
                             || '|^clusters-heldout-s[0-2]-79291876$')
GROUP BY ALL
ORDER BY runs, cluster;
