-- README, "Does T_grok hold?": per group of runs (the seeds of one setting: the run id without its
-- seed, and for `composition-*` runs without the digest too, which is their world's, one per seed), how
-- many runs (n), how many reached the grok threshold on test ID (T_grok, the trainer's first crossing),
-- how many of those stayed at it from some evaluation to their last (`held`) and how long after T_grok
-- that evaluation came, the share of evaluations from T_grok on at the threshold (`kept`) and the
-- lowest after (mean ± std over the runs that reached it). From the store the runs were trained in, or
-- from the committed Parquet:
--   for f in $(find docs/results -name '*runs.parquet' ! -name 'retrained_s0_runs.parquet'); do
--     grokloop import-runs --home /tmp/all "$f"; done
--   grokloop sql --home /tmp/all --file docs/results/t_grok_held.sql
WITH per_run AS (
    SELECT CASE WHEN run_id LIKE 'composition-%' THEN regexp_replace(run_id, '-s[0-9]+(-[0-9a-f]{8})?$', '')
                ELSE regexp_replace(run_id, '-s[0-9]+(-[0-9a-f]{8})?$', '\1') END AS runs,
           groks_at, held_from, kept, lowest_after,
           (SELECT count(*) FROM accuracy_curves a
            WHERE a.run_id = g.run_id AND a.curve = 'test_id' AND a.step >= g.groks_at) AS evals_after
    FROM curve_grokking g
    WHERE g.curve = 'test_id'
)
SELECT runs, count(*) AS n, count(groks_at) AS reached, count(held_from) AS held,
       printf('%.0f ± %.0f', avg(groks_at), coalesce(stddev_samp(groks_at), 0)) AS t_grok,
       CASE WHEN count(held_from) > 0 THEN printf('%.0f ± %.0f (n=%d)', avg(held_from - groks_at),
            coalesce(stddev_samp(held_from - groks_at), 0), count(held_from)) END AS held_after_t_grok,
       printf('%.3f ± %.3f', avg(kept), coalesce(stddev_samp(kept), 0)) AS kept,
       printf('%.3f ± %.3f', avg(lowest_after), coalesce(stddev_samp(lowest_after), 0)) AS lowest_after,
       printf('%d-%d', min(evals_after) FILTER (WHERE groks_at IS NOT NULL),
              max(evals_after) FILTER (WHERE groks_at IS NOT NULL)) AS evals_after
FROM per_run
GROUP BY runs
HAVING count(groks_at) > 0
ORDER BY runs;
