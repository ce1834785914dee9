-- grokloop store, schema version 1.
-- Field names follow OpenTelemetry GenAI spans / LangSmith runs where they overlap:
-- agent name/version, tool_name, arguments, result, status, error, start_time/end_time, tags.

CREATE TABLE IF NOT EXISTS agents (
    agent_id      VARCHAR PRIMARY KEY,          -- '{name}@{version}'
    name          VARCHAR NOT NULL,
    version       VARCHAR NOT NULL,
    kind          VARCHAR,                      -- solver | explorer | model | external
    checkpoint    VARCHAR,                      -- model agents: the checkpoint they sample from
    first_seen    TIMESTAMP NOT NULL DEFAULT now()
);

CREATE TABLE IF NOT EXISTS tasks (
    task_id       VARCHAR PRIMARY KEY,          -- deterministic per family + parameters
    family        VARCHAR NOT NULL,             -- modular | two_hop | programs | external
    split         VARCHAR,                      -- train | test_id | test_ood
    operation     VARCHAR,                      -- op, relation chain or program composition
    difficulty    INTEGER,
    spec          JSON,                         -- everything needed to re-render the task
    first_seen    TIMESTAMP NOT NULL DEFAULT now()
);

CREATE TABLE IF NOT EXISTS trajectories (
    trajectory_id UUID PRIMARY KEY,             -- UUIDv7 made by the client
    agent_id      VARCHAR NOT NULL,
    task_id       VARCHAR NOT NULL,
    family        VARCHAR NOT NULL,
    status        VARCHAR NOT NULL,             -- ok | error | incomplete
    answer        JSON,
    verified      BOOLEAN,
    reward        DOUBLE,
    error         VARCHAR,
    n_steps       INTEGER,
    tags          VARCHAR[],
    metadata      JSON,
    start_time    TIMESTAMP,
    end_time      TIMESTAMP,
    source        VARCHAR,                      -- segment / file the trajectory came from
    ingested_at   TIMESTAMP NOT NULL DEFAULT now()
);

CREATE TABLE IF NOT EXISTS steps (
    trajectory_id UUID NOT NULL,
    idx           INTEGER NOT NULL,             -- 0-based position in the trajectory
    kind          VARCHAR NOT NULL,             -- tool_call | answer | message
    observation   JSON,                         -- what the agent saw before acting
    tool_name     VARCHAR,
    arguments     JSON,
    result        JSON,                         -- what the environment returned
    reward        DOUBLE,
    status        VARCHAR,                      -- ok | error
    error         VARCHAR,
    metadata      JSON,
    start_time    TIMESTAMP,
    end_time      TIMESTAMP,
    PRIMARY KEY (trajectory_id, idx)
);

CREATE TABLE IF NOT EXISTS quarantine (
    source        VARCHAR NOT NULL,             -- file the record came from
    line_no       INTEGER,                      -- 1-based line in that file
    raw           BLOB NOT NULL,                -- the bytes exactly as received
    reason        VARCHAR NOT NULL,
    ingested_at   TIMESTAMP NOT NULL DEFAULT now()
);

CREATE TABLE IF NOT EXISTS ingest_log (
    segment_hash  VARCHAR PRIMARY KEY,          -- hash of the segment's bytes (storage.ingest.content_digest): same bytes, same segment
    source        VARCHAR NOT NULL,
    format        VARCHAR NOT NULL,             -- grokloop | atif
    n_records     INTEGER NOT NULL,
    n_trajectories INTEGER NOT NULL,
    n_steps       INTEGER NOT NULL,
    n_quarantined INTEGER NOT NULL,
    ingested_at   TIMESTAMP NOT NULL DEFAULT now()
);

-- Curation ---------------------------------------------------------------

CREATE TABLE IF NOT EXISTS clusterings (
    clustering_id VARCHAR PRIMARY KEY,          -- fingerprint of (selection, features, method, params, seed)
    method        VARCHAR NOT NULL,             -- kmeans | hkmeans | column
    params        JSON NOT NULL,
    n_clusters    INTEGER NOT NULL,
    created_at    TIMESTAMP NOT NULL DEFAULT now()
);

CREATE TABLE IF NOT EXISTS cluster_assignments (
    clustering_id VARCHAR NOT NULL,
    trajectory_id UUID NOT NULL,
    cluster       VARCHAR NOT NULL,             -- 'c07', 'c07.c02' for hierarchical, or the column value
    distance      DOUBLE,
    PRIMARY KEY (clustering_id, trajectory_id)
);

CREATE TABLE IF NOT EXISTS datasets (
    dataset_id    VARCHAR PRIMARY KEY,          -- the fingerprint
    name          VARCHAR,
    params        JSON NOT NULL,                -- query, clustering, balancing, hold-out, seed
    clustering_id VARCHAR,
    n_rows        INTEGER NOT NULL,
    export_path   VARCHAR,
    created_at    TIMESTAMP NOT NULL DEFAULT now()
);

CREATE TABLE IF NOT EXISTS dataset_rows (
    dataset_id    VARCHAR NOT NULL,
    row_idx       INTEGER NOT NULL,
    trajectory_id UUID,                         -- NULL for test items that come from the generator
    task_id       VARCHAR NOT NULL,
    family        VARCHAR NOT NULL,
    split         VARCHAR NOT NULL,             -- train | test_id | test_ood
    cluster       VARCHAR,
    prompt        VARCHAR[] NOT NULL,           -- task symbols
    answer        VARCHAR[] NOT NULL,
    PRIMARY KEY (dataset_id, row_idx)
);

-- Training ---------------------------------------------------------------

CREATE TABLE IF NOT EXISTS runs (
    run_id        VARCHAR PRIMARY KEY,
    name          VARCHAR,
    objective     VARCHAR NOT NULL,             -- mdm | ar
    dataset_id    VARCHAR,                      -- NULL when trained straight from a generator
    config        JSON NOT NULL,
    status        VARCHAR NOT NULL,             -- running | finished | stopped | failed
    parent_run_id VARCHAR,                      -- self-improvement rounds continue a run
    t_mem         INTEGER,                      -- first step train acc >= 0.99
    t_grok        INTEGER,                      -- first step ID test acc >= 0.95
    grok_ratio    DOUBLE,                       -- t_grok / t_mem
    grok_delay    INTEGER,                      -- t_grok - t_mem: <= 0 means no delay (generalized as it memorized)
    final_step    INTEGER,
    created_at    TIMESTAMP NOT NULL DEFAULT now(),
    updated_at    TIMESTAMP NOT NULL DEFAULT now()
);

-- Long format: one row per (run, step, metric). Written in bulk, idempotent per (run, step, name).
CREATE TABLE IF NOT EXISTS metrics (
    run_id        VARCHAR NOT NULL,
    step          INTEGER NOT NULL,
    name          VARCHAR NOT NULL,             -- train/loss, test_id/acc, test_ood/acc, grad_norm, ...
    value         DOUBLE,
    PRIMARY KEY (run_id, step, name)
);

CREATE TABLE IF NOT EXISTS checkpoints (
    run_id        VARCHAR NOT NULL,
    step          INTEGER NOT NULL,
    path          VARCHAR NOT NULL,
    created_at    TIMESTAMP NOT NULL DEFAULT now(),
    PRIMARY KEY (run_id, step)
);

CREATE TABLE IF NOT EXISTS evaluations (
    run_id        VARCHAR NOT NULL,
    step          INTEGER NOT NULL,
    family        VARCHAR NOT NULL,
    split         VARCHAR NOT NULL,             -- train | test_id | test_ood | cluster:<name>
    n             INTEGER NOT NULL,
    accuracy      DOUBLE NOT NULL,
    sampler       JSON,                         -- scheduler and number of denoising steps
    created_at    TIMESTAMP NOT NULL DEFAULT now(),
    PRIMARY KEY (run_id, step, family, split)
);

CREATE TABLE IF NOT EXISTS self_improve_rounds (
    loop_id       VARCHAR NOT NULL,
    round         INTEGER NOT NULL,
    run_id        VARCHAR NOT NULL,
    dataset_id    VARCHAR,
    n_proposed    INTEGER,
    n_verified    INTEGER,
    test_id_acc   DOUBLE,
    test_ood_acc  DOUBLE,
    created_at    TIMESTAMP NOT NULL DEFAULT now(),
    PRIMARY KEY (loop_id, round)
);
