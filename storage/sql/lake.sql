-- The shared store's own tables (storage/lake.py says why each is there). The first block runs in
-- the DuckLake catalog; the others are PostgreSQL, run through the postgres extension with
-- :holder, :keys and :seconds filled in by storage/lake.py (quoted there).

-- name: lake_tables
CREATE TABLE IF NOT EXISTS lake_views (digest VARCHAR NOT NULL);  -- views.sql as last created
CREATE TABLE IF NOT EXISTS lake_serial (n BIGINT NOT NULL);       -- one row: see `serialize`
INSERT INTO lake_serial SELECT 0 WHERE NOT EXISTS (FROM lake_serial);

-- name: serialize
-- A batch that adds agents or tasks updates this row: two such batches at once conflict, so one
-- runs again and sees the other's rows (DuckLake has no UNIQUE to refuse the second copy).
UPDATE lake_serial SET n = n + 1;

-- name: claims_table
CREATE TABLE IF NOT EXISTS grokloop_ingest_claims (
    key        text PRIMARY KEY,               -- a segment's digest, or producer:<prefix>-<pid>
    holder     text NOT NULL,                  -- host:pid:nonce of the ingest worker
    claimed_at timestamptz NOT NULL DEFAULT now()
)

-- name: claim
-- One statement, so atomic: new keys are taken, keys whose holder stopped renewing them long ago
-- (it died) are taken over, keys another live worker holds are left to it.
INSERT INTO grokloop_ingest_claims (key, holder) SELECT unnest(:keys), :holder
ON CONFLICT (key) DO UPDATE SET holder = excluded.holder, claimed_at = now()
WHERE grokloop_ingest_claims.holder = excluded.holder
   OR grokloop_ingest_claims.claimed_at < now() - make_interval(secs => :seconds)

-- name: held
SELECT key FROM grokloop_ingest_claims WHERE holder = :holder AND key = ANY(:keys)

-- name: release
DELETE FROM grokloop_ingest_claims WHERE holder = :holder AND key = ANY(:keys)
