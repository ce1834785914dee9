-- The trajectories a dataset snapshot may draw from, in an order set by what they hold: by task and
-- answer, the oldest first among equal ones (UUIDv7 ids are time-ordered; exact dedup keeps it). Not
-- by time alone: agents that log side by side interleave differently each time, and the same
-- experience collected again must curate to the same rows in the same order (the same batches).
-- Parameters: $1 family, $2 verified only, $3 statuses, $4 outcomes, $5 agent ids (lists: NULL = any),
-- $6 since, $7 until (start_time; NULL = open). `storage.datasets.select_trajectories` runs this.
SELECT t.trajectory_id::VARCHAR                                        AS trajectory_id,
       t.task_id,
       t.family,
       t.agent_id,
       t.status,
       t.verified,
       t.reward,
       try_cast(t.answer AS VARCHAR[])                                 AS answer,
       coalesce(k.operation, t.metadata->>'operation')                 AS operation,
       coalesce(k.difficulty, try_cast(t.metadata->>'difficulty' AS INTEGER)) AS difficulty,
       coalesce(k.split, t.metadata->>'split')                         AS task_split,
       t.metadata->>'outcome'                                          AS outcome,
       try_cast(k.spec->'prompt' AS VARCHAR[])                         AS prompt,
       t.metadata,
       t.start_time
FROM trajectories t
LEFT JOIN tasks k ON k.task_id = t.task_id
WHERE t.family = $1
  AND (NOT $2 OR t.verified IS TRUE)
  AND ($3::VARCHAR[] IS NULL OR list_contains($3::VARCHAR[], t.status))
  AND ($4::VARCHAR[] IS NULL OR list_contains($4::VARCHAR[], t.metadata->>'outcome'))
  AND ($5::VARCHAR[] IS NULL OR list_contains($5::VARCHAR[], t.agent_id))
  AND ($6::TIMESTAMP IS NULL OR t.start_time >= $6::TIMESTAMP)
  AND ($7::TIMESTAMP IS NULL OR t.start_time < $7::TIMESTAMP)
ORDER BY task_id, answer::VARCHAR, trajectory_id  -- the output columns: storage/datasets/select.py orders by them too
