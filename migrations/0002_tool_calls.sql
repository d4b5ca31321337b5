-- One row per tool call the agent made (n8n webhooks and built-in tools).
-- arguments is plain JSON, or an encrypted envelope when DATA_ENCRYPTION_KEY is set.
CREATE TABLE tool_calls (
    id bigserial PRIMARY KEY,
    department_id text NOT NULL DEFAULT current_setting('app.department_id'),
    session_id text NOT NULL,
    tool text NOT NULL,
    arguments jsonb NOT NULL,
    status text NOT NULL CHECK (status IN ('ok', 'error', 'timeout', 'rejected')),
    http_status integer,
    latency_ms double precision NOT NULL,
    attempts integer NOT NULL DEFAULT 1,
    error text,
    response_bytes integer,
    created_at timestamptz NOT NULL DEFAULT now()
);

-- The agent reads the recent calls of one session.
CREATE INDEX tool_calls_session_recent_idx ON tool_calls (session_id, created_at DESC);

-- Second wall after schema ownership: a connection only sees its own department's rows.
ALTER TABLE tool_calls ENABLE ROW LEVEL SECURITY;
ALTER TABLE tool_calls FORCE ROW LEVEL SECURITY;
CREATE POLICY tenant_isolation ON tool_calls
    USING (department_id = current_setting('app.department_id', true))
    WITH CHECK (department_id = current_setting('app.department_id', true));
