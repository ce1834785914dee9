-- docs/results/composition_programs_probe/probe.md: per probe run, its world (training tasks per
-- program), weight decay, learning rate and gradient filter (Grokfast: none or ema), when it memorised
-- (T_mem: train accuracy >= 0.99), how far it ran in units of T_mem, and test_id accuracy at T_mem, at
-- its best after T_mem (and the step of that best), averaged over every evaluation from T_mem on, its
-- trend from T_mem on, and at the end (the task's verifier, test rows only); OOD best (and its step)
-- and last; train accuracy on average and at its lowest from T_mem on (how far it falls back after
-- memorising: one evaluation at the end may catch a spike); the weight norm at T_mem and at the end.
-- From the store the runs were trained in, or from their Parquet:
--   grokloop import-runs docs/results/composition_programs_probe/probe_runs.parquet
--   grokloop sql --file docs/results/composition_programs_probe/probe.sql
WITH probe AS (
    SELECT run_id, t_mem, status,
           CAST(json_extract(config, '$.family_params.train_per_program') AS INTEGER) AS tasks_per_program,
           CAST(json_extract(config, '$.weight_decay') AS DOUBLE) AS weight_decay,
           CAST(json_extract(config, '$.lr') AS DOUBLE) AS lr,
           json_extract_string(config, '$.grokfast') AS grokfast,
           CAST(json_extract(config, '$.seed') AS INTEGER) AS seed
    FROM runs WHERE regexp_matches(run_id, '^tpp[0-9]+-wd')
), acc AS (
    SELECT m.run_id, m.step, m.name, m.value FROM metrics m JOIN probe USING (run_id)
    WHERE m.name IN ('train/acc', 'test_id/acc', 'test_ood/acc', 'weight_norm')
)
SELECT p.run_id, p.tasks_per_program, p.weight_decay, p.lr, p.grokfast, p.seed, p.status, p.t_mem,
       max(a.step) AS last_eval,
       round(max(a.step) / p.t_mem, 1) AS x_t_mem,
       round(max(a.value) FILTER (a.name = 'test_id/acc' AND a.step = p.t_mem), 3) AS id_at_t_mem,
       round(max(a.value) FILTER (a.name = 'test_id/acc' AND a.step > p.t_mem), 3) AS id_best_after,
       -- the first step at that best (ordering on (value, -step) breaks ties toward the earlier step)
       arg_max(a.step, (a.value, -a.step)) FILTER (a.name = 'test_id/acc' AND a.step > p.t_mem) AS id_best_step,
       round(avg(a.value) FILTER (a.name = 'test_id/acc' AND a.step >= p.t_mem), 3) AS id_mean_from_t_mem,
       -- points of ID accuracy per 10,000 steps, a least-squares line through the evaluations from T_mem on
       round(1e6 * regr_slope(a.value, a.step) FILTER (a.name = 'test_id/acc' AND a.step >= p.t_mem), 1)
           AS id_trend_per_10k,
       round(arg_max(a.value, a.step) FILTER (a.name = 'test_id/acc'), 3) AS id_last,
       round(arg_max(a.value, a.step) FILTER (a.name = 'train/acc'), 3) AS train_last,
       round(avg(a.value) FILTER (a.name = 'train/acc' AND a.step >= p.t_mem), 3) AS train_mean_from_t_mem,
       round(min(a.value) FILTER (a.name = 'train/acc' AND a.step >= p.t_mem), 3) AS train_min_from_t_mem,
       round(max(a.value) FILTER (a.name = 'test_ood/acc'), 3) AS ood_best,
       arg_max(a.step, (a.value, -a.step)) FILTER (a.name = 'test_ood/acc') AS ood_best_step,
       round(arg_max(a.value, a.step) FILTER (a.name = 'test_ood/acc'), 3) AS ood_last,
       round(max(a.value) FILTER (a.name = 'weight_norm' AND a.step = p.t_mem), 1) AS weight_norm_at_t_mem,
       round(arg_max(a.value, a.step) FILTER (a.name = 'weight_norm'), 1) AS weight_norm_last
FROM probe p JOIN acc a USING (run_id)
GROUP BY p.run_id, p.tasks_per_program, p.weight_decay, p.lr, p.grokfast, p.seed, p.status, p.t_mem
ORDER BY p.tasks_per_program, p.weight_decay, p.lr DESC, p.grokfast DESC, p.seed, p.run_id;
