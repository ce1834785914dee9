-- docs/results/composition_programs_probe/probe.md: a probe setting's inits side by side, mean ± std
-- over its seeds (n). Per setting (training tasks per program, weight decay, lr, Grokfast filter) with
-- two or more seeds that memorised -- one run a seed, its longest: a run trained again under another
-- name counts once -- T_mem, then each seed read over the same window relative to its own T_mem: the
-- doublings of the steps from T_mem that every seed completed (T_mem to 2 x T_mem, 2 x to 4 x, ...; a
-- seed's last evaluation at or past the window's end; a setting with a seed short of 2 x T_mem has no
-- window, so no row). In that window: test_id averaged over the evaluations, its points per doubling
-- (a least-squares line against log2(step)), its best, and test_ood averaged and at its best (the
-- task's verifier, test rows only).
--   grokloop import-runs docs/results/composition_programs_probe/probe_runs.parquet
--   grokloop sql --file docs/results/composition_programs_probe/probe_seeds.sql
WITH probe AS (
    SELECT r.run_id, r.t_mem,
           CAST(json_extract(r.config, '$.family_params.train_per_program') AS INTEGER) AS tasks_per_program,
           CAST(json_extract(r.config, '$.weight_decay') AS DOUBLE) AS weight_decay,
           CAST(json_extract(r.config, '$.lr') AS DOUBLE) AS lr,
           json_extract_string(r.config, '$.grokfast') AS grokfast,
           CAST(json_extract(r.config, '$.seed') AS INTEGER) AS seed,
           max(m.step) AS last_step
    FROM runs r JOIN metrics m USING (run_id)
    WHERE regexp_matches(r.run_id, '^tpp[0-9]+-wd') AND r.t_mem IS NOT NULL
    GROUP BY ALL
), one_per_seed AS (
    SELECT * FROM probe
    QUALIFY row_number() OVER (PARTITION BY tasks_per_program, weight_decay, lr, grokfast, seed
                               ORDER BY last_step DESC, run_id) = 1
), settings AS (
    SELECT tasks_per_program, weight_decay, lr, grokfast, count(*) AS n,
           string_agg(seed::VARCHAR, ',' ORDER BY seed) AS seeds,
           min(floor(log2(last_step / t_mem)))::INTEGER AS doublings
    FROM one_per_seed GROUP BY ALL HAVING count(*) >= 2
), per_seed AS (
    SELECT o.tasks_per_program, o.weight_decay, o.lr, o.grokfast, s.n, s.seeds, s.doublings, o.seed, o.t_mem,
           avg(m.value) FILTER (m.name = 'test_id/acc') AS id_mean,
           regr_slope(m.value, log2(m.step)) FILTER (m.name = 'test_id/acc') AS id_per_doubling,
           max(m.value) FILTER (m.name = 'test_id/acc') AS id_best,
           avg(m.value) FILTER (m.name = 'test_ood/acc') AS ood_mean,
           max(m.value) FILTER (m.name = 'test_ood/acc') AS ood_best
    FROM one_per_seed o
    JOIN settings s USING (tasks_per_program, weight_decay, lr, grokfast)
    JOIN metrics m ON m.run_id = o.run_id
    WHERE m.name IN ('test_id/acc', 'test_ood/acc')
      AND m.step >= o.t_mem AND m.step < o.t_mem * pow(2, s.doublings)
    GROUP BY ALL
)
SELECT tasks_per_program, weight_decay, lr, grokfast, n, seeds,
       printf('%.0f ± %.0f', avg(p.t_mem), stddev_samp(p.t_mem)) AS t_mem,
       printf('T_mem to %d x T_mem', pow(2, doublings)::INTEGER) AS window,
       printf('%.1f ± %.1f', 100 * avg(p.id_mean), 100 * stddev_samp(p.id_mean)) AS id_mean,
       printf('%.2f ± %.2f', 100 * avg(p.id_per_doubling), 100 * stddev_samp(p.id_per_doubling)) AS id_points_per_doubling,
       printf('%.1f ± %.1f', 100 * avg(p.id_best), 100 * stddev_samp(p.id_best)) AS id_best,
       printf('%.1f ± %.1f', 100 * avg(p.ood_mean), 100 * stddev_samp(p.ood_mean)) AS ood_mean,
       printf('%.1f ± %.1f', 100 * avg(p.ood_best), 100 * stddev_samp(p.ood_best)) AS ood_best
FROM per_seed p
GROUP BY tasks_per_program, weight_decay, lr, grokfast, n, seeds, doublings
ORDER BY tasks_per_program, weight_decay, lr DESC, grokfast DESC;
