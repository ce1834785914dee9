-- The clusters grid's recipe beside the same runs with one training setting changed (`grokloop experiment
-- clusters --settings ...`, whose runs carry the setting in their names: `grad_clip1.0`, `betas0.90.95`),
-- seed for seed on the same snapshot (same rows, init and data order). Per variant, setting and seed, for
-- the removed cluster `x-y`: its best test accuracy, the first evaluation at 95% (groks_at), the share of the
-- evaluations from then on still there (kept), where it ended; and the lowest train accuracy after step 3,000
-- (the late falls the changed settings are meant to stop). Last, per variant and setting, the paired
-- difference changed - recipe of the best `x-y` accuracy (mean ± std over seeds, n) and how many reached 95%.
-- Pages: clusters_clip/clusters.md (gradient clipping), clusters_beta2/README.md (Adam's beta2).
-- From the store the runs were trained in, or from the pages' Parquets:
--   grokloop import-runs docs/results/clusters_clip/clusters_runs.parquet
--   grokloop import-runs docs/results/clusters_clip/noclip/clusters_runs.parquet
--   grokloop sql --format markdown --file docs/results/clusters_paired.sql
WITH arm AS (  -- a name that does not match extracts empty strings
    SELECT * FROM (
        SELECT run_id, status,
               regexp_extract(run_id, '^clusters-([a-z0-9]+)(-[a-z_]+[0-9.]+)?-s([0-9]+)-([0-9a-f]+)$',
                              ['variant', 'setting', 'seed', 'snapshot']) AS p
        FROM runs)
    WHERE p.variant <> '' AND status = 'finished'  -- a run still training (or stopped) is no pair yet
), per_run AS (
    SELECT a.p.variant AS variant, ltrim(a.p.setting, '-') AS setting, a.p.seed::INTEGER AS seed,
           a.p.snapshot AS snapshot, g.best, g.groks_at, g.kept, g.final_acc, g.last_step,
           (SELECT min(value) FROM metrics m
            WHERE m.run_id = a.run_id AND m.name = 'train/acc' AND m.step >= 3000) AS train_low
    FROM arm a JOIN cluster_grokking g ON g.run_id = a.run_id AND g.cluster = 'x-y'
), paired AS (
    SELECT r.variant, c.setting, r.seed,
           r.best AS best_recipe, c.best AS best_changed,
           r.groks_at AS groks_at_recipe, c.groks_at AS groks_at_changed,
           r.kept AS kept_recipe, c.kept AS kept_changed,
           r.final_acc AS end_recipe, c.final_acc AS end_changed,
           r.last_step AS steps_recipe, c.last_step AS steps_changed,
           r.train_low AS train_low_recipe, c.train_low AS train_low_changed
    FROM per_run r
    JOIN per_run c ON c.variant = r.variant AND c.seed = r.seed AND c.snapshot = r.snapshot
                  AND c.setting <> '' AND r.setting = ''
)
SELECT variant, setting, seed::VARCHAR AS seed,
       printf('%.3f', best_recipe) AS best_recipe, printf('%.3f', best_changed) AS best_changed,
       groks_at_recipe::VARCHAR AS groks_at_recipe, groks_at_changed::VARCHAR AS groks_at_changed,
       printf('%.3f', kept_recipe) AS kept_recipe, printf('%.3f', kept_changed) AS kept_changed,
       printf('%.3f @ %d', end_recipe, steps_recipe) AS end_recipe,
       printf('%.3f @ %d', end_changed, steps_changed) AS end_changed,
       printf('%.3f', train_low_recipe) AS train_low_recipe, printf('%.3f', train_low_changed) AS train_low_changed
FROM paired
UNION ALL
SELECT variant, setting, printf('changed - recipe (n=%d)', count(*)),
       NULL, printf('%+.3f ± %.3f', avg(best_changed - best_recipe), coalesce(stddev_samp(best_changed - best_recipe), 0)),
       printf('%d/%d reach 95%%', count(groks_at_recipe), count(*)),
       printf('%d/%d reach 95%%', count(groks_at_changed), count(*)),
       NULL, NULL, NULL, NULL, NULL, NULL
FROM paired GROUP BY variant, setting
ORDER BY variant, setting, seed;
