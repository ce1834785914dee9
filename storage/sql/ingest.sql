-- Ingest: spool records -> validated records -> the store, all in SQL (storage/ingest.py runs
-- these blocks in order inside one transaction per batch). Inputs registered from Python:
--   raw_lines(seg INTEGER, line_no INTEGER, line VARCHAR)          JSONL: one row per non-blank line
--   raw_starts, raw_steps, raw_outcomes, raw_other                  Arrow: one row per record, one
--       (seg INTEGER, line_no INTEGER, nbytes BIGINT,                table per record type (other:
--        <agents.spool.SCHEMA>)                                      a type missing or unknown);
--                                                                   nbytes: its free-form text
--   raw_bad(seg INTEGER, line_no INTEGER, raw BLOB, reason VARCHAR) rejected before SQL: lines that
--                                                                   are not UTF-8, unreadable files
--   raw_segs(seg INTEGER, segment_hash VARCHAR, source VARCHAR, format VARCHAR, n_records INTEGER,
--            arrow_starts INTEGER, arrow_steps INTEGER)   counted in Python
--   (raw_lines and the Arrow record tables are registered Arrow tables, any may be empty; raw_bad
--   and raw_segs are temp tables made from query parameters)
-- Lines arrive with their trailing newline (zero-copy from the segment bytes); JSON ignores it and
-- the quarantine strips it so `raw` is the record's bytes exactly. An Arrow record's `line_no` is
-- its 1-based row in the file, and its `raw` is the row as JSON.
-- `check` (JSONL, into checked_lines) and `check_arrow` (Arrow: only the bad rows, arrow_bad) make
-- the `checked` views, one row per record with its reason; every later block works on those,
-- whatever the input format.
-- Blocks start with a "name" marker line; $max_bytes is the per-record size limit.

-- name: macros
-- Values come out of the one parse as minified JSON text, so a value's JSON type shows in its
-- text (first character, or a cast that succeeds): no second parse per field.
CREATE OR REPLACE TEMP MACRO txt(x) AS CAST(x AS VARCHAR);
CREATE OR REPLACE TEMP MACRO j_missing(x) AS x IS NULL OR txt(x) = 'null';
-- JSON null and an absent key both become SQL NULL in the store.
CREATE OR REPLACE TEMP MACRO j_val(x) AS CASE WHEN NOT j_missing(x) THEN x END;
-- A JSON string's value (NULL if not a string): slice off the quotes unless escapes need undoing.
CREATE OR REPLACE TEMP MACRO j_str(x) AS CASE WHEN starts_with(txt(x), '"') THEN
    CASE WHEN contains(txt(x), '\') THEN json_extract_string(x, '$') ELSE txt(x)[2:-2] END END;
CREATE OR REPLACE TEMP MACRO j_int(x) AS
    CASE WHEN regexp_full_match(txt(x), '-?[0-9]+') THEN TRY_CAST(txt(x) AS BIGINT) END;
CREATE OR REPLACE TEMP MACRO j_num(x) AS
    CASE WHEN NOT starts_with(txt(x), '"') THEN TRY_CAST(txt(x) AS DOUBLE) END;
-- A time as UTC: one with an offset ("Z", "+02:00", "-0530") is converted (a plain TIMESTAMP cast
-- would drop the offset and keep the wall-clock time); one without is taken as UTC already.
CREATE OR REPLACE TEMP MACRO j_utc(s) AS CASE
    WHEN strlen(s) > 10 AND regexp_matches(s, '([Zz]|[+-]\d\d(:?\d\d)?)$')
        THEN timezone('UTC', TRY_CAST(s AS TIMESTAMPTZ))
    ELSE TRY_CAST(s AS TIMESTAMP) END;
CREATE OR REPLACE TEMP MACRO j_time(x) AS j_utc(j_str(x));
CREATE OR REPLACE TEMP MACRO ok_str(x) AS j_missing(x) OR starts_with(txt(x), '"');
-- The SDK writes a NaN/inf reward as the string "nan"/"inf"; other writers may emit a NaN literal.
-- `num` is j_num(x), so the text is only looked at when it is not a number (an IN list here
-- would be planned as a join over every row).
CREATE OR REPLACE TEMP MACRO j_nan(x, num) AS CASE WHEN num IS NOT NULL THEN NOT isfinite(num)
    ELSE regexp_full_match(txt(x), '"*-?(nan|inf|infinity)"*', 'i') END;

-- name: checked_lines
-- JSONL records, checked: typed values and the reason a record is quarantined (the first problem
-- found, NULL when the record is good). Filled by `check`, which runs only when there are lines.
CREATE OR REPLACE TEMP TABLE checked_lines (
    seg INTEGER, line_no INTEGER, rtype VARCHAR, trajectory_id UUID,
    -- steps
    idx INTEGER, kind VARCHAR, observation JSON, tool_name VARCHAR, arguments JSON, result JSON,
    reward DOUBLE, status VARCHAR, error VARCHAR, metadata JSON, start_time TIMESTAMP,
    end_time TIMESTAMP,
    -- outcomes
    answer JSON, verified BOOLEAN, n_steps INTEGER,
    -- trajectory starts
    agent_name VARCHAR, agent_version VARCHAR, agent_kind VARCHAR, checkpoint VARCHAR,
    task_id VARCHAR, family VARCHAR, split VARCHAR, operation VARCHAR, difficulty INTEGER,
    spec JSON, tags VARCHAR[],
    -- usage (steps; model also trajectory starts)
    model VARCHAR, input_tokens BIGINT, output_tokens BIGINT, cost_usd DOUBLE, call_id VARCHAR, turn INTEGER,
    reason VARCHAR
);

-- name: check
-- JSONL: one JSON parse per line, every field of every record type as JSON text, then typed
-- values and the reason.
INSERT INTO checked_lines BY NAME
WITH parsed AS (
    SELECT seg, line_no, strlen(line) - 1 AS nbytes, starts_with(ltrim(line), '{') AS is_object,
           try(from_json(line, '{"v": "JSON", "type": "JSON", "trajectory_id": "JSON",
               "index": "JSON", "kind": "JSON", "observation": "JSON", "tool_name": "JSON",
               "arguments": "JSON", "result": "JSON", "reward": "JSON", "status": "JSON",
               "error": "JSON", "metadata": "JSON", "start_time": "JSON", "end_time": "JSON",
               "answer": "JSON", "verified": "JSON", "n_steps": "JSON", "tags": "JSON",
               "agent": "JSON", "task": "JSON", "model": "JSON", "input_tokens": "JSON",
               "output_tokens": "JSON", "cost_usd": "JSON", "call_id": "JSON", "turn": "JSON"}')) AS r
    FROM raw_lines
), typed AS (
    SELECT seg, line_no, nbytes, is_object, r,
           j_str(r.type)                                  AS rtype,
           TRY_CAST(j_str(r.trajectory_id) AS UUID)       AS trajectory_id,
           j_int(r.index)                                 AS idx,
           j_num(r.reward)                                AS reward,
           j_time(r.start_time)                           AS start_time,
           j_time(r.end_time)                             AS end_time,
           j_int(r.n_steps)                               AS n_steps,
           j_int(r.input_tokens)                          AS input_tokens,
           j_int(r.output_tokens)                         AS output_tokens,
           j_num(r.cost_usd)                              AS cost_usd,
           j_int(r.turn)                                  AS turn,
           CASE txt(r.verified) WHEN 'true' THEN true WHEN 'false' THEN false END AS verified,
           CASE WHEN starts_with(txt(r.agent), '{') THEN from_json(r.agent,
               '{"name": "JSON", "version": "JSON", "kind": "JSON", "checkpoint": "JSON"}') END AS a,
           CASE WHEN starts_with(txt(r.task), '{') THEN from_json(r.task,
               '{"family": "JSON", "task_id": "JSON", "split": "JSON", "operation": "JSON",
                 "difficulty": "JSON", "spec": "JSON"}') END AS t,
           CASE WHEN starts_with(txt(r.tags), '[') THEN TRY_CAST(r.tags AS VARCHAR[]) END AS tags
    FROM parsed
)
SELECT seg, line_no, rtype, trajectory_id,
    -- steps
    idx::INTEGER AS idx, coalesce(j_str(r.kind), 'tool_call') AS kind,
    j_val(r.observation) AS observation, j_str(r.tool_name) AS tool_name,
    j_val(r.arguments) AS arguments, j_val(r.result) AS result, reward,
    coalesce(j_str(r.status), 'ok') AS status, j_str(r.error) AS error,
    j_val(r.metadata) AS metadata, start_time, end_time,
    -- outcomes
    j_val(r.answer) AS answer, verified, n_steps::INTEGER AS n_steps,
    -- trajectory starts
    j_str(a.name) AS agent_name, coalesce(j_str(a.version), txt(j_val(a.version)), '0') AS agent_version,
    j_str(a.kind) AS agent_kind, j_str(a.checkpoint) AS checkpoint,
    j_str(t.task_id) AS task_id, j_str(t.family) AS family, j_str(t.split) AS split,
    j_str(t.operation) AS operation, j_int(t.difficulty)::INTEGER AS difficulty, j_val(t.spec) AS spec,
    coalesce(tags, []) AS tags,
    -- usage
    j_str(r.model) AS model, input_tokens, output_tokens, cost_usd, j_str(r.call_id) AS call_id,
    turn::INTEGER AS turn,
    CASE
    WHEN nbytes > $max_bytes THEN printf('oversized record: %d bytes > limit of %d', nbytes, $max_bytes)
    WHEN r IS NULL THEN 'invalid JSON'
    WHEN NOT is_object THEN 'not a JSON object'
    WHEN j_missing(r.type) THEN 'missing field: type'
    WHEN rtype IS NULL OR rtype NOT IN ('trajectory', 'step', 'outcome')
        THEN 'unknown record type: ' || txt(r.type)
    WHEN NOT j_missing(r.v) AND txt(r.v) <> '1' THEN 'unsupported format version: v=' || txt(r.v)
    WHEN j_missing(r.trajectory_id) THEN 'missing field: trajectory_id'
    WHEN trajectory_id IS NULL THEN 'wrong type: trajectory_id must be a UUID string'
    WHEN rtype = 'trajectory' THEN CASE
        WHEN a IS NULL THEN 'missing field: agent (an object)'
        WHEN j_missing(a.name) THEN 'missing field: agent.name'
        WHEN j_str(a.name) IS NULL THEN 'wrong type: agent.name must be a string'
        WHEN NOT (ok_str(a.version) OR j_num(a.version) IS NOT NULL) THEN 'wrong type: agent.version must be a string'
        WHEN NOT (ok_str(a.kind) AND ok_str(a.checkpoint))
            THEN 'wrong type: agent.kind and agent.checkpoint must be strings'
        WHEN t IS NULL THEN 'missing field: task (an object)'
        WHEN j_missing(t.family) THEN 'missing field: task.family'
        WHEN j_missing(t.task_id) THEN 'missing field: task.task_id'
        WHEN j_str(t.family) IS NULL OR j_str(t.task_id) IS NULL OR NOT (ok_str(t.split) AND ok_str(t.operation))
            THEN 'wrong type: task.family, task.task_id, task.split and task.operation must be strings'
        WHEN NOT (j_missing(t.difficulty) OR j_int(t.difficulty) IS NOT NULL)
            THEN 'wrong type: task.difficulty must be an integer'
        WHEN NOT (j_missing(r.tags) OR tags IS NOT NULL) THEN 'wrong type: tags must be a list of strings'
        WHEN NOT (j_missing(r.start_time) OR start_time IS NOT NULL)
            THEN 'wrong type: start_time must be an ISO 8601 time string'
        WHEN NOT ok_str(r.model) THEN 'wrong type: model must be a string'
        END
    WHEN rtype = 'step' THEN CASE
        WHEN j_missing(r.index) THEN 'missing field: index'
        WHEN idx IS NULL OR idx < 0 OR idx > 2147483647 THEN 'wrong type: index must be a non-negative integer'
        WHEN j_nan(r.reward, reward) THEN 'NaN or infinite reward: ' || txt(r.reward)
        WHEN NOT (j_missing(r.reward) OR reward IS NOT NULL) THEN 'wrong type: reward must be a number'
        WHEN NOT (ok_str(r.kind) AND ok_str(r.tool_name)) THEN 'wrong type: kind and tool_name must be strings'
        WHEN NOT (ok_str(r.status) AND ok_str(r.error)) THEN 'wrong type: status and error must be strings'
        WHEN NOT ((j_missing(r.start_time) OR start_time IS NOT NULL) AND (j_missing(r.end_time) OR end_time IS NOT NULL))
            THEN 'wrong type: start_time and end_time must be ISO 8601 time strings'
        WHEN NOT (ok_str(r.model) AND ok_str(r.call_id)) THEN 'wrong type: model and call_id must be strings'
        WHEN NOT (j_missing(r.input_tokens) OR coalesce(input_tokens >= 0, false))
            OR NOT (j_missing(r.output_tokens) OR coalesce(output_tokens >= 0, false))
            THEN 'wrong type: input_tokens and output_tokens must be non-negative integers'
        WHEN j_nan(r.cost_usd, cost_usd) THEN 'NaN or infinite cost_usd: ' || txt(r.cost_usd)
        WHEN NOT (j_missing(r.cost_usd) OR cost_usd IS NOT NULL) THEN 'wrong type: cost_usd must be a number'
        WHEN NOT (j_missing(r.turn) OR coalesce(turn BETWEEN 0 AND idx, false))
            THEN 'wrong type: turn must be the index of an earlier step (or its own)'
        END
    WHEN rtype = 'outcome' THEN CASE
        WHEN j_nan(r.reward, reward) THEN 'NaN or infinite reward: ' || txt(r.reward)
        WHEN NOT (j_missing(r.reward) OR reward IS NOT NULL) THEN 'wrong type: reward must be a number'
        WHEN NOT (ok_str(r.status) AND ok_str(r.error)) THEN 'wrong type: status and error must be strings'
        WHEN NOT (j_missing(r.verified) OR verified IS NOT NULL) THEN 'wrong type: verified must be true, false or null'
        WHEN NOT (j_missing(r.n_steps) OR coalesce(n_steps BETWEEN 0 AND 2147483647, false))
            THEN 'wrong type: n_steps must be a non-negative integer'
        WHEN NOT (j_missing(r.end_time) OR end_time IS NOT NULL) THEN 'wrong type: end_time must be an ISO 8601 time string'
        END
    END AS reason
FROM typed;

-- name: raw_rows
-- The Arrow records as one relation, for the blocks that look at every record as it came.
CREATE OR REPLACE TEMP VIEW raw_rows AS
SELECT * FROM raw_starts UNION ALL SELECT * FROM raw_steps
UNION ALL SELECT * FROM raw_outcomes UNION ALL SELECT * FROM raw_other;

-- name: check_arrow
-- Arrow segments: fields are typed columns already, so nothing is parsed but the free-form JSON
-- text, validated here and only here (its columns arrive as DuckDB's JSON type, which the insert
-- takes as it is). What a typed file can still get wrong: a missing required value, an unknown
-- type, a NaN/inf reward, a negative index or n_steps, JSON text that is not JSON, an oversized
-- record (the bytes of its free-form text: the JSON columns and error). Only the rows with a
-- reason are kept: the `checked_*` views read the rest straight from the Arrow tables, which costs
-- less than writing every row out once more.
CREATE OR REPLACE TEMP TABLE arrow_bad AS
WITH typed AS (
    SELECT seg, line_no, nbytes, "type", trajectory_id, "index", reward, n_steps, agent_name,
           task_family, task_id, observation, arguments, result, metadata, answer, task_spec,
           input_tokens, output_tokens, cost_usd, turn
    FROM raw_rows
)
SELECT seg, line_no, "type", reason FROM (
    SELECT seg, line_no, "type", CASE
    WHEN nbytes > $max_bytes THEN printf('oversized record: %d bytes > limit of %d', nbytes, $max_bytes)
    WHEN "type" IS NULL THEN 'missing field: type'
    WHEN "type" NOT IN ('trajectory', 'step', 'outcome') THEN 'unknown record type: ' || "type"
    WHEN trajectory_id IS NULL THEN 'missing field: trajectory_id'
    WHEN NOT json_valid(observation) THEN 'invalid JSON in observation'
    WHEN NOT json_valid(arguments) THEN 'invalid JSON in arguments'
    WHEN NOT json_valid(result) THEN 'invalid JSON in result'
    WHEN NOT json_valid(metadata) THEN 'invalid JSON in metadata'
    WHEN NOT json_valid(answer) THEN 'invalid JSON in answer'
    WHEN NOT json_valid(task_spec) THEN 'invalid JSON in task_spec'
    WHEN "type" = 'trajectory' THEN CASE
        WHEN agent_name IS NULL THEN 'missing field: agent.name'
        WHEN task_family IS NULL THEN 'missing field: task.family'
        WHEN task_id IS NULL THEN 'missing field: task.task_id'
        END
    WHEN "type" = 'step' THEN CASE
        WHEN "index" IS NULL THEN 'missing field: index'
        WHEN "index" < 0 THEN 'wrong type: index must be a non-negative integer'
        WHEN NOT isfinite(reward) THEN 'NaN or infinite reward: ' || reward
        WHEN input_tokens < 0 OR output_tokens < 0
            THEN 'wrong type: input_tokens and output_tokens must be non-negative integers'
        WHEN NOT isfinite(cost_usd) THEN 'NaN or infinite cost_usd: ' || cost_usd
        WHEN turn < 0 OR turn > "index" THEN 'wrong type: turn must be the index of an earlier step (or its own)'
        END
    WHEN "type" = 'outcome' THEN CASE
        WHEN NOT isfinite(reward) THEN 'NaN or infinite reward: ' || reward
        WHEN n_steps < 0 THEN 'wrong type: n_steps must be a non-negative integer'
        END
    END AS reason
    FROM typed
) WHERE reason IS NOT NULL;

-- name: arrow_records
-- An Arrow record table's rows as the columns of the `checked` views (below).
-- The id goes through text: DuckDB 1.5.5 cannot push a join's filter on a UUID column into the
-- scan of a registered Arrow table ("Unimplemented type UUID for Arrow Filter Pushdown"), and a
-- filter on the cast value stays above the scan (the stored side's scans still get it).
CREATE OR REPLACE TEMP MACRO arrow_records(records, record_type) AS TABLE
SELECT seg, line_no, record_type AS rtype, trajectory_id::VARCHAR::UUID AS trajectory_id,
    -- steps
    "index" AS idx, coalesce(kind, 'tool_call') AS kind, observation, tool_name, arguments, result,
    reward, coalesce(status, 'ok') AS status, error, metadata, start_time, end_time,
    -- outcomes
    answer, verified, n_steps,
    -- trajectory starts
    agent_name, coalesce(agent_version, '0') AS agent_version, agent_kind, agent_checkpoint AS checkpoint,
    task_id, task_family AS family, task_split AS split, task_operation AS operation,
    task_difficulty AS difficulty, task_spec AS spec, coalesce(tags, []) AS tags,
    -- usage
    model, input_tokens, output_tokens, cost_usd, call_id, turn
FROM query_table(records);

-- name: checked
-- Every record of the batch, whatever its format: the columns of arrow_records, and `reason`,
-- NULL when the record is good, one view per record type. Every later block reads these, only the
-- types it needs: each Arrow table a statement names costs about a millisecond to plan, and a block's
-- planning can cost more than its work. (A record of no known type has a reason: arrow_bad.)
-- Careful: a record with a reason may hold JSON-typed text that is not JSON. Apply no JSON
-- function to it (DuckDB 2.0 treats that error as fatal to the connection); filter on
-- `reason IS NULL` first, as every block here does.
CREATE OR REPLACE TEMP MACRO arrow_checked(records, record_type) AS TABLE
SELECT r.*, b.reason FROM arrow_records(records, record_type) r LEFT JOIN arrow_bad b USING (seg, line_no);
CREATE OR REPLACE TEMP VIEW checked_starts AS
SELECT * FROM checked_lines WHERE rtype = 'trajectory'
UNION ALL BY NAME SELECT * FROM arrow_checked('raw_starts', 'trajectory');
CREATE OR REPLACE TEMP VIEW checked_steps AS
SELECT * FROM checked_lines WHERE rtype = 'step'
UNION ALL BY NAME SELECT * FROM arrow_checked('raw_steps', 'step');
CREATE OR REPLACE TEMP VIEW checked_outcomes AS
SELECT * FROM checked_lines WHERE rtype = 'outcome'
UNION ALL BY NAME SELECT * FROM arrow_checked('raw_outcomes', 'outcome');

-- name: checked_clean
-- `checked` for the usual batch: Arrow records only, none with a reason. The same views without
-- the JSONL records and the join to arrow_bad, which every later block would plan and run.
CREATE OR REPLACE TEMP VIEW checked_starts AS
SELECT *, NULL::VARCHAR AS reason FROM arrow_records('raw_starts', 'trajectory');
CREATE OR REPLACE TEMP VIEW checked_steps AS
SELECT *, NULL::VARCHAR AS reason FROM arrow_records('raw_steps', 'step');
CREATE OR REPLACE TEMP VIEW checked_outcomes AS
SELECT *, NULL::VARCHAR AS reason FROM arrow_records('raw_outcomes', 'outcome');

-- name: duplicates
-- The same key twice in the incoming data: a step's (trajectory, index), a trajectory's start
-- record, the first one wins (by segment, then line). A later copy identical to the first is
-- left out; one that differs is quarantined, naming the record it conflicts with (the rule for a
-- record that conflicts with what is stored, `stored_conflicts`, applied inside the batch).
-- Looked for only after a primary key refused the batch: a batch is first tried with
-- `no_duplicates`, since finding none costs about 5% of a large batch's SQL time.
CREATE OR REPLACE TEMP TABLE dup_steps AS
WITH ranked AS (
    SELECT s.seg, s.line_no, s.trajectory_id, s.idx,
           row(s.kind, s.observation::VARCHAR, s.tool_name, s.arguments::VARCHAR, s.result::VARCHAR,
               s.reward, s.status, s.error, s.metadata::VARCHAR, s.start_time, s.end_time,
               s.model, s.input_tokens, s.output_tokens, s.cost_usd, s.call_id, s.turn) AS content,
           row_number() OVER (PARTITION BY s.trajectory_id, s.idx ORDER BY s.seg, s.line_no) AS nth
    FROM checked_steps s SEMI JOIN (
        SELECT trajectory_id, idx FROM checked_steps WHERE reason IS NULL GROUP BY ALL HAVING count(*) > 1
    ) k USING (trajectory_id, idx)
    WHERE s.reason IS NULL
)
SELECT d.seg, d.line_no, CASE WHEN d.content IS DISTINCT FROM f.content THEN
    printf('duplicate step index %d for trajectory %s conflicts with the one in %s line %d',
           d.idx, d.trajectory_id, s.source, f.line_no) END AS reason
FROM ranked d JOIN ranked f ON f.trajectory_id = d.trajectory_id AND f.idx = d.idx AND f.nth = 1
JOIN raw_segs s ON s.seg = f.seg
WHERE d.nth > 1;
CREATE OR REPLACE TEMP TABLE dup_starts AS
WITH ranked AS (
    SELECT seg, line_no, trajectory_id,
           row(agent_name, agent_version, task_id, family, tags, metadata::VARCHAR, start_time, model) AS content,
           row_number() OVER (PARTITION BY trajectory_id ORDER BY seg, line_no) AS nth
    FROM checked_starts SEMI JOIN (
        SELECT trajectory_id FROM checked_starts WHERE reason IS NULL GROUP BY ALL HAVING count(*) > 1
    ) k USING (trajectory_id)
    WHERE reason IS NULL
)
SELECT d.seg, d.line_no, CASE WHEN d.content IS DISTINCT FROM f.content THEN
    printf('duplicate trajectory start %s conflicts with the one in %s line %d', d.trajectory_id, s.source, f.line_no)
    END AS reason
FROM ranked d JOIN ranked f ON f.trajectory_id = d.trajectory_id AND f.nth = 1
JOIN raw_segs s ON s.seg = f.seg
WHERE d.nth > 1;

-- name: no_duplicates
CREATE OR REPLACE TEMP TABLE dup_steps (seg INTEGER, line_no INTEGER, reason VARCHAR);
CREATE OR REPLACE TEMP TABLE dup_starts (seg INTEGER, line_no INTEGER, reason VARCHAR);

-- name: stored_conflicts
-- Stored data is never changed by a later record. A start or a step whose key is already in the
-- store is left out when it is the same record again (ingesting anything twice changes nothing)
-- and quarantined, naming the stored record, when it differs. (Outcomes: `outcomes`.)
CREATE OR REPLACE TEMP TABLE stored_conflicts AS
SELECT c.seg, c.line_no, 'trajectory' AS rtype,
       printf('trajectory start %s conflicts with the stored trajectory (agent %s, task %s)',
              c.trajectory_id, t.agent_id, t.task_id) AS reason
FROM checked_starts c JOIN trajectories t USING (trajectory_id)
WHERE c.reason IS NULL
  AND row(c.agent_name || '@' || c.agent_version, c.task_id, c.family, c.tags, c.metadata::VARCHAR, c.start_time,
          c.model)
      IS DISTINCT FROM row(t.agent_id, t.task_id, t.family, t.tags, t.metadata::VARCHAR, t.start_time, t.model)
UNION ALL
SELECT c.seg, c.line_no, 'step',
       printf('step index %d for trajectory %s conflicts with the stored step', c.idx, c.trajectory_id)
FROM checked_steps c JOIN steps s USING (trajectory_id, idx)
WHERE c.reason IS NULL
  AND row(c.kind, c.observation::VARCHAR, c.tool_name, c.arguments::VARCHAR, c.result::VARCHAR, c.reward,
          c.status, c.error, c.metadata::VARCHAR, c.start_time, c.end_time,
          c.model, c.input_tokens, c.output_tokens, c.cost_usd, c.call_id, c.turn)
      IS DISTINCT FROM row(s.kind, s.observation::VARCHAR, s.tool_name, s.arguments::VARCHAR, s.result::VARCHAR,
          s.reward, s.status, s.error, s.metadata::VARCHAR, s.start_time, s.end_time,
          s.model, s.input_tokens, s.output_tokens, s.cost_usd, s.call_id, s.turn);

-- name: insert_agents
-- New agents and tasks, one row per key already (GROUP BY), so an anti join does what INSERT OR
-- IGNORE would without the second grouping of the new rows that it plans (a third of the block).
INSERT INTO agents BY NAME
SELECT * FROM (
    SELECT agent_name || '@' || agent_version AS agent_id, any_value(agent_name) AS name,
           any_value(agent_version) AS version, any_value(agent_kind) AS kind,
           any_value(checkpoint) AS checkpoint
    FROM checked_starts WHERE reason IS NULL GROUP BY agent_id
) ANTI JOIN agents USING (agent_id);

-- name: insert_tasks
-- A task's first description in the batch wins; one already in the store is left as it is.
INSERT INTO tasks BY NAME
SELECT * FROM (
    SELECT task_id, arg_min(family, pos) AS family, arg_min(split, pos) AS split,
           arg_min(operation, pos) AS operation, arg_min(difficulty, pos) AS difficulty,
           arg_min(spec, pos) AS spec
    FROM (SELECT *, seg::BIGINT << 32 | line_no AS pos FROM checked_starts WHERE reason IS NULL)
    GROUP BY task_id
) ANTI JOIN tasks USING (task_id);

-- name: outcomes
-- Outcomes complete a trajectory started in this batch or an earlier one (stored 'incomplete').
-- One whose start record was never ingested (or was quarantined) gets a reason rather than an
-- invented trajectory. A trajectory's outcome is never replaced: a second outcome, in this batch
-- or for a trajectory stored with one, is left out when it is the same and quarantined, naming
-- what it conflicts with, when it differs. `applies`: the one outcome that completes a trajectory.
CREATE OR REPLACE TEMP TABLE in_outcomes AS
WITH o AS MATERIALIZED (
    SELECT c.seg, c.line_no, c.trajectory_id, c.status, c.answer, c.verified, c.reward, c.error,
           c.n_steps, c.end_time, t.status IS NOT NULL AS stored,
           coalesce(t.status <> 'incomplete', false) AS stored_outcome,
           c.trajectory_id IN (SELECT trajectory_id FROM checked_starts WHERE reason IS NULL) AS started
    FROM checked_outcomes c LEFT JOIN (SELECT trajectory_id, status FROM trajectories) t USING (trajectory_id)
    WHERE c.reason IS NULL
), repeated AS (  -- only ids seen twice are ranked
    SELECT *, row_number() OVER (PARTITION BY trajectory_id ORDER BY seg, line_no) AS nth
    FROM o SEMI JOIN (
        SELECT trajectory_id FROM o WHERE stored OR started GROUP BY ALL HAVING count(*) > 1
    ) k USING (trajectory_id)
    WHERE stored OR started
), later AS (  -- the second and later outcomes in the batch; a reason when one differs from the first
    SELECT d.seg, d.line_no, CASE
        WHEN row(d.status, d.answer::VARCHAR, d.verified, d.reward, d.error, d.n_steps, d.end_time)
             IS DISTINCT FROM row(f.status, f.answer::VARCHAR, f.verified, f.reward, f.error, f.n_steps, f.end_time)
        THEN printf('duplicate outcome for trajectory %s conflicts with the one in %s line %d',
                    d.trajectory_id, s.source, f.line_no) END AS reason
    FROM repeated d JOIN repeated f ON f.trajectory_id = d.trajectory_id AND f.nth = 1
    JOIN raw_segs s ON s.seg = f.seg
    WHERE d.nth > 1
), against_stored AS (  -- outcomes for trajectories stored with one; a reason when one differs
    SELECT o.seg, o.line_no, CASE
        WHEN row(o.status, o.answer::VARCHAR, o.verified, o.reward, o.error, o.n_steps, o.end_time)
             IS DISTINCT FROM row(t.status, t.answer::VARCHAR, t.verified, t.reward, t.error, t.n_steps, t.end_time)
        THEN printf('outcome for trajectory %s conflicts with the stored outcome (status %s, verified %s, reward %s)',
                    o.trajectory_id, t.status, coalesce(t.verified::VARCHAR, 'null'), coalesce(t.reward::VARCHAR, 'null'))
        END AS reason
    FROM o JOIN trajectories t USING (trajectory_id)
    WHERE o.stored_outcome
)
SELECT o.*, CASE WHEN NOT (o.stored OR o.started) THEN 'outcome for unknown trajectory ' || o.trajectory_id
                     || ' (its start record was never ingested)'
                 ELSE coalesce(a.reason, l.reason) END AS reason,
       (o.stored OR o.started) AND NOT o.stored_outcome AND l.seg IS NULL AS applies
FROM o LEFT JOIN against_stored a USING (seg, line_no) LEFT JOIN later l USING (seg, line_no);

-- name: insert_trajectories
-- New trajectories, complete when their outcome came in the same batch (the usual case: one
-- insert, not an insert and then an update). A trajectory already in the store is left as it is,
-- and a start record seen twice in the batch lands once (dup_starts; else the primary key refuses).
INSERT INTO trajectories BY NAME
SELECT c.trajectory_id, c.agent_name || '@' || c.agent_version AS agent_id, c.task_id, c.family,
       c.tags, c.metadata, c.start_time, c.model, s.source, coalesce(o.status, 'incomplete') AS status,
       o.answer, o.verified, o.reward, o.error, o.n_steps, o.end_time
FROM checked_starts c JOIN raw_segs s USING (seg)
ANTI JOIN dup_starts USING (seg, line_no)
ANTI JOIN trajectories USING (trajectory_id)
LEFT JOIN (SELECT * FROM in_outcomes WHERE applies AND reason IS NULL) o USING (trajectory_id)
WHERE c.reason IS NULL;

-- name: update_trajectories
-- Outcomes for trajectories an earlier batch stored without one ('incomplete').
UPDATE trajectories AS t
SET status = o.status, answer = o.answer, verified = o.verified, reward = o.reward,
    error = o.error, n_steps = o.n_steps, end_time = o.end_time
FROM in_outcomes o
WHERE o.applies AND o.reason IS NULL AND o.stored AND t.trajectory_id = o.trajectory_id
  AND t.status = 'incomplete';

-- name: insert_steps
-- A step already in the store (the same record from another segment) is left as it is.
-- Without dup_steps, one row per key is left, so an anti join does what INSERT OR IGNORE would
-- without its grouping of the new rows by key (half the block's time). When duplicates were not
-- looked for and a key is there twice, the primary key refuses the insert (see `duplicates`).
INSERT INTO steps BY NAME
SELECT trajectory_id, idx, kind, observation, tool_name, arguments, result, reward, status, error,
       metadata, start_time, end_time, model, input_tokens, output_tokens, cost_usd, call_id, turn
FROM checked_steps c ANTI JOIN dup_steps USING (seg, line_no) ANTI JOIN steps USING (trajectory_id, idx)
WHERE c.reason IS NULL;

-- name: any_bad
-- Whether anything in the batch goes to quarantine. When nothing does, `quarantine` is skipped
-- and `no_bad` makes its (empty) table instead: planning it costs a few ms a batch.
SELECT EXISTS (FROM checked_lines WHERE reason IS NOT NULL) OR EXISTS (FROM arrow_bad)
    OR EXISTS (FROM dup_steps WHERE reason IS NOT NULL) OR EXISTS (FROM dup_starts WHERE reason IS NOT NULL)
    OR EXISTS (FROM stored_conflicts) OR EXISTS (FROM in_outcomes WHERE reason IS NOT NULL) OR EXISTS (FROM raw_bad);

-- name: no_bad
CREATE OR REPLACE TEMP TABLE bad (seg INTEGER, line_no INTEGER, raw BLOB, reason VARCHAR);

-- name: quarantine
CREATE OR REPLACE TEMP TABLE bad AS
WITH reasons AS (
    SELECT seg, line_no, reason FROM checked_lines WHERE reason IS NOT NULL
    UNION ALL SELECT seg, line_no, reason FROM arrow_bad
    UNION ALL SELECT seg, line_no, reason FROM dup_steps WHERE reason IS NOT NULL
    UNION ALL SELECT seg, line_no, reason FROM dup_starts WHERE reason IS NOT NULL
    UNION ALL SELECT seg, line_no, reason FROM stored_conflicts
    UNION ALL SELECT seg, line_no, reason FROM in_outcomes WHERE reason IS NOT NULL
)
SELECT seg, line_no, encode(rtrim(l.line, chr(10))) AS raw, reason
FROM reasons JOIN raw_lines l USING (seg, line_no)
UNION ALL
-- An Arrow row as JSON, its free-form values as the strings they came as: the text of a JSON
-- column may be what is wrong with the row, and to_json would parse it.
SELECT seg, line_no, encode(to_json(struct_pack(*COLUMNS(r.* EXCLUDE (seg, line_no, nbytes) REPLACE (
           observation::VARCHAR AS observation, arguments::VARCHAR AS arguments, result::VARCHAR AS result,
           metadata::VARCHAR AS metadata, answer::VARCHAR AS answer, task_spec::VARCHAR AS task_spec))))::VARCHAR)
       AS raw, reason
FROM reasons JOIN raw_rows r USING (seg, line_no)
UNION ALL
SELECT seg, line_no, raw, reason FROM raw_bad;
INSERT INTO quarantine BY NAME
SELECT s.source, b.line_no, b.raw, b.reason FROM bad b JOIN raw_segs s USING (seg);

-- name: ingest_log
-- Per segment: its records (as Python counted them, plus the ones rejected before SQL), the good
-- trajectory starts and steps (a duplicate step not counted), and what went to quarantine. The
-- Arrow counts come from Python too, less the records with a reason: counting the checked views
-- again would plan and scan every input table once more. No segment here is in ingest_log yet:
-- ingest_segments left those out, holding the store's lock (or, on DuckLake, the segments' claims).
INSERT INTO ingest_log BY NAME
WITH good AS (
    SELECT seg, rtype, count(*) AS n FROM checked_lines WHERE reason IS NULL GROUP BY ALL
    UNION ALL SELECT seg, 'trajectory', arrow_starts FROM raw_segs
    UNION ALL SELECT seg, 'step', arrow_steps FROM raw_segs
    UNION ALL SELECT seg, "type", -count(*) FROM arrow_bad GROUP BY ALL
    UNION ALL SELECT seg, 'step', -count(*) FROM dup_steps GROUP BY ALL
    UNION ALL SELECT seg, 'trajectory', -count(*) FROM dup_starts WHERE reason IS NOT NULL GROUP BY ALL
    UNION ALL SELECT seg, rtype, -count(*) FROM stored_conflicts GROUP BY ALL
), per_seg AS (
    SELECT seg, sum(n) FILTER (WHERE rtype = 'trajectory') AS n_trajectories,
           sum(n) FILTER (WHERE rtype = 'step') AS n_steps
    FROM good GROUP BY seg
)
SELECT s.segment_hash, s.source, s.format, s.n_records + coalesce(q.n, 0) AS n_records,
       coalesce(g.n_trajectories, 0) AS n_trajectories, coalesce(g.n_steps, 0) AS n_steps,
       coalesce(b.n, 0) AS n_quarantined
FROM raw_segs s
LEFT JOIN per_seg g USING (seg)
LEFT JOIN (SELECT seg, count(*) AS n FROM raw_bad GROUP BY seg) q USING (seg)
LEFT JOIN (SELECT seg, count(*) AS n FROM bad GROUP BY seg) b USING (seg);

-- name: cleanup
DROP VIEW IF EXISTS checked_starts;
DROP VIEW IF EXISTS checked_steps;
DROP VIEW IF EXISTS checked_outcomes;
DROP MACRO TABLE IF EXISTS arrow_checked;
DROP MACRO TABLE IF EXISTS arrow_records;
DROP VIEW IF EXISTS raw_rows;
DROP TABLE IF EXISTS checked_lines;
DROP TABLE IF EXISTS arrow_bad;
DROP TABLE IF EXISTS dup_steps;
DROP TABLE IF EXISTS dup_starts;
DROP TABLE IF EXISTS stored_conflicts;
DROP TABLE IF EXISTS in_outcomes;
DROP TABLE IF EXISTS bad;
