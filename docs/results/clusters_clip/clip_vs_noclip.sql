-- docs/results/clusters_clip/clusters.md, "Side by side": the same snapshots trained without and with
-- gradient clipping (grad_clip=1.0), seed for seed (same rows, init and data order). Per variant and seed,
-- for the removed cluster `x-y`: its best test accuracy, the first evaluation at 95% (groks_at), where it
-- ended; and the lowest train accuracy after step 3,000 (the late falls clipping is meant to stop). Last,
-- per variant, the paired difference clip - no clip of the best `x-y` accuracy (mean ± std over seeds, n).
-- From the store the runs were trained in, or from the two pages' Parquets:
--   grokloop import-runs docs/results/clusters_clip/clusters_runs.parquet
--   grokloop import-runs docs/results/clusters_clip/noclip/clusters_runs.parquet
--   grokloop sql --file docs/results/clusters_clip/clip_vs_noclip.sql
WITH arm AS (
    SELECT run_id,
           regexp_extract(run_id, '^clusters-([a-z0-9]+)(-grad_clip1\.0)?-s([0-9])-[0-9a-f]+$',
                          ['variant', 'clip', 'seed']) AS p
    FROM runs
    WHERE regexp_matches(run_id, '^clusters-([a-z0-9]+)(-grad_clip1\.0)?-s([0-9])-[0-9a-f]+$')
      AND status = 'finished'  -- a run still training (or stopped) is no pair yet
), per_run AS (
    SELECT a.p.variant AS variant, a.p.seed::INTEGER AS seed, a.p.clip <> '' AS clip, g.best, g.groks_at,
           g.final_acc, g.last_step,
           (SELECT min(value) FROM metrics m
            WHERE m.run_id = a.run_id AND m.name = 'train/acc' AND m.step >= 3000) AS train_low
    FROM arm a JOIN cluster_grokking g ON g.run_id = a.run_id AND g.cluster = 'x-y'
), paired AS (
    SELECT n.variant, n.seed,
           n.best AS best_noclip, c.best AS best_clip,
           n.groks_at AS groks_at_noclip, c.groks_at AS groks_at_clip,
           n.final_acc AS end_noclip, c.final_acc AS end_clip,
           n.last_step AS steps_noclip, c.last_step AS steps_clip,
           n.train_low AS train_low_noclip, c.train_low AS train_low_clip
    FROM per_run n JOIN per_run c ON c.variant = n.variant AND c.seed = n.seed AND c.clip AND NOT n.clip
)
SELECT variant, seed::VARCHAR AS seed, printf('%.3f', best_noclip) AS best_noclip, printf('%.3f', best_clip) AS best_clip,
       groks_at_noclip::VARCHAR AS groks_at_noclip, groks_at_clip::VARCHAR AS groks_at_clip,
       printf('%.3f @ %d', end_noclip, steps_noclip) AS end_noclip, printf('%.3f @ %d', end_clip, steps_clip) AS end_clip,
       printf('%.3f', train_low_noclip) AS train_low_noclip, printf('%.3f', train_low_clip) AS train_low_clip
FROM paired
UNION ALL
SELECT variant, printf('clip - no clip (n=%d)', count(*)),
       NULL, printf('%+.3f ± %.3f', avg(best_clip - best_noclip), coalesce(stddev_samp(best_clip - best_noclip), 0)),
       printf('%d/%d reach 95%%', count(groks_at_noclip), count(*)), printf('%d/%d reach 95%%', count(groks_at_clip), count(*)),
       NULL, NULL, NULL, NULL
FROM paired GROUP BY variant
ORDER BY variant, seed;
