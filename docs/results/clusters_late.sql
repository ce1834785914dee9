-- docs/results/clusters.md, "Late falls": per group of runs and cluster, over seeds (n), how many
-- reached 95% test, when, the share of evaluations after still at 95% (kept), the lowest after, and
-- the test accuracy at step 20,000. From the store the runs were trained in, or from their Parquet:
--   grokloop import-runs docs/results/clusters_late_runs.parquet
--   grokloop sql --file docs/results/clusters_late.sql
SELECT regexp_replace(run_id, '-s[0-9](-79291876)?$', '') AS runs, cluster, count(*) AS n,
       count(groks_at) AS reached_95,
       printf('%.0f ± %.0f', avg(groks_at), stddev_samp(groks_at))            AS groks_at,
       printf('%.3f ± %.3f', avg(kept), stddev_samp(kept))                    AS kept,
       printf('%.3f ± %.3f', avg(lowest_after), stddev_samp(lowest_after))    AS lowest_after,
       printf('%.3f ± %.3f', avg(final_acc), stddev_samp(final_acc))          AS at_20000
FROM cluster_grokking
WHERE regexp_matches(run_id, '^clusters-(balanced-long|balanced-wd0\.3|heldout-lr1e-3)-s[0-2]$'
                             || '|^clusters-heldout-s[0-2]-79291876$')
GROUP BY ALL
ORDER BY runs, cluster;
