-- grokloop store, schema version 2: tokens, cost and model as columns.
-- A store made at version 1 gets them here, in place (NULL for the rows it already holds).
--
-- Parallel tool calls: each call is its own step row (tool_name, arguments, result, call_id), so
-- counting, filtering and joining tool calls is plain SQL. The rows of one agent turn (the model
-- call that asked for the tools and the calls themselves) share `turn`, the idx of the turn's
-- first row; a row with no `turn` is a turn of its own. A turn's model usage is on the row of its
-- model call (ATIF: the turn's first row).

ALTER TABLE steps ADD COLUMN model VARCHAR;           -- the model this call used (OTel gen_ai.request.model)
ALTER TABLE steps ADD COLUMN input_tokens BIGINT;     -- prompt tokens (gen_ai.usage.input_tokens, ATIF prompt_tokens)
ALTER TABLE steps ADD COLUMN output_tokens BIGINT;    -- completion tokens (gen_ai.usage.output_tokens)
ALTER TABLE steps ADD COLUMN cost_usd DOUBLE;         -- what the call cost, in US dollars
ALTER TABLE steps ADD COLUMN call_id VARCHAR;         -- the tool call's id (ATIF tool_call_id, gen_ai.tool.call.id)
ALTER TABLE steps ADD COLUMN turn INTEGER;            -- idx of the first row of the agent turn this row belongs to
ALTER TABLE trajectories ADD COLUMN model VARCHAR;    -- the model the agent ran on (ATIF agent.model_name)
