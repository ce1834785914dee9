-- programs_20.md's table: per arm, over seeds (n), ID accuracy at T_mem, its mean and its best from T_mem to
-- step 20,000 and its value at 20,000; OOD at 20,000 and its best to 20,000 (mean ± std): the grid's cap, so a
-- run continued past it does not change the table. From the store the runs were trained in, or from their Parquet:
--   grokloop import-runs docs/results/composition_programs_20/composition_runs.parquet
--   grokloop sql --file docs/results/composition_programs_20/after_t_mem.sql
WITH per_run AS (
    SELECT regexp_extract(r.run_id, '-(ar|mdm)-s[0-9]+-', 1) AS arm, r.run_id, r.t_mem,
           max(m.value) FILTER (m.name = 'test_id/acc' AND m.step = r.t_mem) AS id_at_t_mem,
           avg(m.value) FILTER (m.name = 'test_id/acc' AND m.step BETWEEN r.t_mem AND 20000) AS id_mean_after,
           max(m.value) FILTER (m.name = 'test_id/acc' AND m.step BETWEEN r.t_mem AND 20000) AS id_best_after,
           max(m.value) FILTER (m.name = 'test_id/acc' AND m.step = 20000) AS id_end,
           max(m.value) FILTER (m.name = 'test_ood/acc' AND m.step = 20000) AS ood_end,
           max(m.value) FILTER (m.name = 'test_ood/acc' AND m.step <= 20000) AS ood_best
    FROM runs r JOIN metrics m USING (run_id)
    WHERE r.run_id LIKE 'composition-programs-canonical-20-%'
    GROUP BY ALL
)
SELECT arm, count(*) AS n,
       printf('%.0f ± %.0f', avg(t_mem), coalesce(stddev_samp(t_mem), 0)) AS t_mem,
       printf('%.1f ± %.1f', 100 * avg(id_at_t_mem), 100 * coalesce(stddev_samp(id_at_t_mem), 0)) AS id_at_t_mem,
       printf('%.1f ± %.1f', 100 * avg(id_mean_after), 100 * coalesce(stddev_samp(id_mean_after), 0)) AS id_mean_after,
       printf('%.1f ± %.1f', 100 * avg(id_best_after), 100 * coalesce(stddev_samp(id_best_after), 0)) AS id_best_after,
       printf('%.1f ± %.1f (n=%d)', 100 * avg(id_end), 100 * coalesce(stddev_samp(id_end), 0), count(id_end)) AS id_end,
       printf('%.1f ± %.1f (n=%d)', 100 * avg(ood_end), 100 * coalesce(stddev_samp(ood_end), 0), count(ood_end)) AS ood_end,
       printf('%.1f ± %.1f', 100 * avg(ood_best), 100 * coalesce(stddev_samp(ood_best), 0)) AS ood_best
FROM per_run
GROUP BY arm
ORDER BY arm;
