-- docs/results/clusters.md, "Late falls": what a run that stays at ~50% on x+y and x*y gets right.
-- Per operation, test rows split by whether the swapped pair (b op a) is a training row; accuracy
-- per seed, then mean ± std over seeds. On a `grokloop evaluate RUN --answers FILE` file:
--   grokloop sql --table a=docs/results/clusters_answers_heldout_lr1e-3.parquet --file docs/results/clusters_swapped_pairs.sql
WITH test AS (SELECT run_id, operation, prompt, correct FROM a WHERE split = 'test_id'),
train AS (SELECT DISTINCT run_id, operation, prompt FROM a WHERE split = 'train'),
per_seed AS (
    SELECT t.run_id, t.operation, s.prompt IS NOT NULL AS swapped_pair_in_train, count(*) AS rows,
           avg(t.correct::INTEGER) AS acc
    FROM test t
    LEFT JOIN train s ON s.run_id = t.run_id AND s.operation = t.operation  -- prompts read "a op b ="
     AND s.prompt = concat_ws(' ', split_part(t.prompt, ' ', 3), split_part(t.prompt, ' ', 2),
                              split_part(t.prompt, ' ', 1), '=')
    GROUP BY ALL
)
SELECT operation, swapped_pair_in_train, count(*) AS seeds, sum(rows) AS rows,
       printf('%.3f ± %.3f', avg(acc), stddev_samp(acc)) AS test_acc
FROM per_seed
GROUP BY ALL
ORDER BY ALL;
