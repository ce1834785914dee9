-- docs/results/clusters.md, "What the falls are": in each run, from the first evaluation with the clusters
-- other than x-y (x+y and x*y) all at 95% test to the end, the evaluations where they fell below it
-- (below_80: how many of them below 80%; falls_after_15000: in the last quarter of a 20,000-step run)
-- beside those where they held: how often train accuracy is below 99% too, and the gradient norm
-- (median). Per run, then mean ± std over the runs of a group (n). The runs: the grid's held-out ones, the
-- arms of "What the falls are" and, on another snapshot, beta2 0.95's no-stop runs (clusters_beta2/). From the
-- store the runs were trained in, or from their Parquet (the grid's runs are in clusters_runs.parquet):
--   grokloop import-runs docs/results/clusters_runs.parquet
--   grokloop import-runs docs/results/clusters_late_runs.parquet
--   grokloop sql --file docs/results/clusters_falls.sql
WITH train AS (
    SELECT run_id, step,
           any_value(value) FILTER (WHERE name = 'train/acc') AS train_acc,
           any_value(value) FILTER (WHERE name = 'grad_norm') AS grad_norm
    FROM metrics
    WHERE name IN ('train/acc', 'grad_norm')
    GROUP BY run_id, step
), after AS (
    SELECT c.run_id, c.step, c.others_acc < c.level AS fell, c.others_acc < 0.8 AS deep, t.train_acc, t.grad_norm
    FROM cluster_curves c
    JOIN cluster_grokking g USING (run_id, cluster)
    JOIN train t USING (run_id, step)
    WHERE c.cluster = 'x-y' AND c.step >= g.others_groks_at
      AND regexp_matches(c.run_id, '^clusters-(balanced-(long|wd0\.3|ema|cos|clip1)|heldout-clip1)-s[0-2]$|^clusters-heldout-s[0-2]-79291876$'
                                   || '|^clusters-balanced-betas0\.90\.95-nostop-s[0-2]-670a14b9$')
), per_run AS (
    SELECT run_id, count(*) AS evals, count(*) FILTER (WHERE fell) AS falls, count(*) FILTER (WHERE deep) AS below_80,
           count(*) FILTER (WHERE fell AND step > 15000) AS after_15000,
           avg((train_acc < 0.99)::INTEGER) FILTER (WHERE fell)     AS train_below_99_in_falls,
           avg((train_acc < 0.99)::INTEGER) FILTER (WHERE NOT fell) AS train_below_99_held,
           median(grad_norm) FILTER (WHERE fell)                    AS grad_norm_in_falls,
           median(grad_norm) FILTER (WHERE NOT fell)                AS grad_norm_held
    FROM after GROUP BY run_id
)
SELECT regexp_replace(run_id, '-s[0-9](-[0-9a-f]{8})?$', '') AS runs, count(*) AS n,
       sum(evals) AS evals, sum(falls) AS falls, sum(below_80) AS below_80, sum(after_15000) AS falls_after_15000,
       printf('%.3f ± %.3f (n=%d)', avg(train_below_99_in_falls), coalesce(stddev_samp(train_below_99_in_falls), 0),
              count(train_below_99_in_falls)) AS train_below_99_in_falls,
       printf('%.3f ± %.3f (n=%d)', avg(train_below_99_held), coalesce(stddev_samp(train_below_99_held), 0),
              count(train_below_99_held)) AS train_below_99_held,
       printf('%.2f ± %.2f (n=%d)', avg(grad_norm_in_falls), coalesce(stddev_samp(grad_norm_in_falls), 0),
              count(grad_norm_in_falls)) AS grad_norm_in_falls,
       printf('%.2f ± %.2f (n=%d)', avg(grad_norm_held), coalesce(stddev_samp(grad_norm_held), 0),
              count(grad_norm_held)) AS grad_norm_held
FROM per_run
GROUP BY ALL
ORDER BY runs;
