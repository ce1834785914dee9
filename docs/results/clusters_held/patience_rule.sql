-- Where the patience rule stops each balanced clusters run, counted two ways over its recorded test ID
-- curve (`accuracy_curves`' 'test_id', every evaluation, at the run's threshold: 95%): from T_grok
-- (`curve_grokking.groks_at`), the first evaluation at 95%
-- (the rule before stop 79), and from the last return to 95% (the rule since: every evaluation at 95%
-- for `patience` steps). `patience` 500, the grid's; a run that ran past where a rule stops it shows
-- where that rule would have. `*_stop`: the first evaluation at which the rule is met (NULL: not
-- within the steps run); `*_test_id`: test ID accuracy there; `*_at_95`: whether it is at 95% there;
-- `*_lowest_after`: the lowest test ID of the evaluations the run recorded after that stop (NULL: none,
-- the run ended there).
-- Runs: every committed run named clusters-balanced-*.
WITH rule AS (SELECT 500 AS patience),
curve AS (
    SELECT run_id, step, acc AS value, acc >= level AS at_threshold
    FROM accuracy_curves
    WHERE curve = 'test_id' AND run_id LIKE 'clusters-balanced-%'
),
streaks AS (  -- an evaluation's streak: the evaluations since the last one below the threshold
    SELECT *, count(*) FILTER (WHERE NOT at_threshold) OVER (PARTITION BY run_id ORDER BY step) AS streak
    FROM curve
),
held AS (
    SELECT *, min(CASE WHEN at_threshold THEN step END) OVER (PARTITION BY run_id, streak) AS held_since
    FROM streaks
),
t_grok AS (
    SELECT run_id, groks_at AS t_grok
    FROM curve_grokking WHERE curve = 'test_id' AND groks_at IS NOT NULL AND run_id LIKE 'clusters-balanced-%'
),
first_rule AS (
    SELECT c.run_id, min(c.step) AS stop
    FROM curve c JOIN t_grok g USING (run_id), rule
    WHERE c.step >= g.t_grok + rule.patience GROUP BY c.run_id
),
held_rule AS (
    SELECT h.run_id, min(h.step) AS stop
    FROM held h, rule
    WHERE h.at_threshold AND h.step - h.held_since >= rule.patience GROUP BY h.run_id
)
SELECT r.run_id,
       (r.config->>'$.patience')::INT    AS trained_patience,
       r.final_step                      AS ran_to,
       g.t_grok,
       f.stop                            AS first_crossing_stop,
       round(fc.value, 3)                AS first_crossing_test_id,
       fc.at_threshold                   AS first_crossing_at_95,
       (SELECT round(min(c.value), 3) FROM curve c WHERE c.run_id = r.run_id AND c.step > f.stop)
                                         AS first_crossing_lowest_after,
       h.stop                            AS held_stop,
       round(hc.value, 3)                AS held_test_id,
       (SELECT round(min(c.value), 3) FROM curve c WHERE c.run_id = r.run_id AND c.step > h.stop)
                                         AS held_lowest_after
FROM runs r
JOIN t_grok g USING (run_id)
LEFT JOIN first_rule f USING (run_id)
LEFT JOIN curve fc ON fc.run_id = r.run_id AND fc.step = f.stop
LEFT JOIN held_rule h ON h.run_id = r.run_id
LEFT JOIN curve hc ON hc.run_id = r.run_id AND hc.step = h.stop
ORDER BY r.run_id;
