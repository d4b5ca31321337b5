-- Bookkeeping of the migration runner (python -m aio_agent.migrate): one row per applied file.
-- Schema-agnostic: the runner sets search_path to the tenant schema and runs as the tenant role.
CREATE TABLE schema_migrations (
    version text PRIMARY KEY,
    name text NOT NULL,
    checksum text NOT NULL,
    applied_at timestamptz NOT NULL DEFAULT now()
);
