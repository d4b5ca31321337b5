-- What the agent remembers about a caller between sessions (looked up by caller id: the PK).
-- context is plain JSON, or an encrypted envelope when DATA_ENCRYPTION_KEY is set.
CREATE TABLE session_context (
    department_id text NOT NULL DEFAULT current_setting('app.department_id'),
    caller_id text NOT NULL,
    session_id text NOT NULL,
    context jsonb NOT NULL DEFAULT '{}'::jsonb,
    updated_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (department_id, caller_id)
);

ALTER TABLE session_context ENABLE ROW LEVEL SECURITY;
ALTER TABLE session_context FORCE ROW LEVEL SECURITY;
CREATE POLICY tenant_isolation ON session_context
    USING (department_id = current_setting('app.department_id', true))
    WITH CHECK (department_id = current_setting('app.department_id', true));
