-- programs_20.md's tables: per window and arm, over seeds (n), ID accuracy at T_mem, its mean and its best from
-- T_mem to the window's end and its value there; OOD there and its best to there (mean ± std; n of a value at the
-- end: the runs that reached it). Two windows: to step 20,000, the grid's cap (equal steps for every arm), and
-- to 10 x each run's own T_mem (what the question needs: a run that memorises late goes on past 20,000 to it).
-- A run continued past a window's end does not change that window's row. A run that never memorised (no T_mem:
-- `mdm-full`, whose train and ID accuracy rise together) counts in `memorised` only, reads '—' in the columns
-- from T_mem, and its second window is its whole run (it went on to its cap). From the store the runs were trained
-- in, or from their Parquet:
--   grokloop import-runs docs/results/composition_programs_20/composition_runs.parquet
--   grokloop import-runs docs/results/composition_programs_20_shared/composition_runs.parquet   # ar-shared
--   grokloop import-runs docs/results/composition_programs_20_mdm_full/composition_runs.parquet  # mdm-full
--   grokloop sql --file docs/results/composition_programs_20/after_t_mem.sql
WITH windows(ord, window_end) AS (VALUES (1, '20,000'), (2, '10 x T_mem')),
per_run AS (
    SELECT w.ord, w.window_end, regexp_extract(r.run_id, '-20-(.+)-s[0-9]+-[0-9a-f]+$', 1) AS arm, r.run_id, r.t_mem,
           CASE w.ord WHEN 1 THEN 20000 ELSE coalesce(10 * r.t_mem, run_end.step) END AS last_step
    FROM runs r CROSS JOIN windows w
    JOIN (SELECT run_id, max(step) AS step FROM metrics GROUP BY run_id) run_end USING (run_id)
    WHERE r.run_id LIKE 'composition-programs-canonical-20-%'
),
per_run_values AS (
    SELECT p.ord, p.window_end, p.arm, p.run_id, p.t_mem,
           max(m.value) FILTER (m.name = 'test_id/acc' AND m.step = p.t_mem) AS id_at_t_mem,
           avg(m.value) FILTER (m.name = 'test_id/acc' AND m.step BETWEEN p.t_mem AND p.last_step) AS id_mean_after,
           max(m.value) FILTER (m.name = 'test_id/acc' AND m.step BETWEEN p.t_mem AND p.last_step) AS id_best_after,
           max(m.value) FILTER (m.name = 'test_id/acc' AND m.step = p.last_step) AS id_end,
           max(m.value) FILTER (m.name = 'test_ood/acc' AND m.step = p.last_step) AS ood_end,
           max(m.value) FILTER (m.name = 'test_ood/acc' AND m.step <= p.last_step) AS ood_best
    FROM per_run p JOIN metrics m USING (run_id)
    GROUP BY ALL
)
SELECT window_end AS "to", arm, count(*) AS n, printf('%d/%d', count(t_mem), count(*)) AS memorised,
       coalesce(printf('%.0f ± %.0f', avg(t_mem), coalesce(stddev_samp(t_mem), 0)), '—') AS t_mem,
       coalesce(printf('%.1f ± %.1f', 100 * avg(id_at_t_mem), 100 * coalesce(stddev_samp(id_at_t_mem), 0)), '—') AS id_at_t_mem,
       coalesce(printf('%.1f ± %.1f', 100 * avg(id_mean_after), 100 * coalesce(stddev_samp(id_mean_after), 0)), '—')
           AS id_mean_after,
       coalesce(printf('%.1f ± %.1f', 100 * avg(id_best_after), 100 * coalesce(stddev_samp(id_best_after), 0)), '—')
           AS id_best_after,
       coalesce(printf('%.1f ± %.1f (n=%d)', 100 * avg(id_end), 100 * coalesce(stddev_samp(id_end), 0), count(id_end)),
                '— (n=0)') AS id_end,
       coalesce(printf('%.1f ± %.1f (n=%d)', 100 * avg(ood_end), 100 * coalesce(stddev_samp(ood_end), 0), count(ood_end)),
                '— (n=0)') AS ood_end,
       printf('%.1f ± %.1f', 100 * avg(ood_best), 100 * coalesce(stddev_samp(ood_best), 0)) AS ood_best
FROM per_run_values
GROUP BY ord, window_end, arm
ORDER BY ord, arm;
