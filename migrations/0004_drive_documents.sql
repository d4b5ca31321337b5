-- Documents synced from Google Drive by n8n; (department_id, drive_file_id) is the upsert key so a
-- re-sync is idempotent. search_documents queries the generated tsvector through the GIN index.
CREATE TABLE drive_documents (
    id bigserial PRIMARY KEY,
    department_id text NOT NULL DEFAULT current_setting('app.department_id'),
    drive_file_id text NOT NULL,
    title text NOT NULL,
    mime_type text,
    modified_time timestamptz,
    content text,
    checksum text,
    search tsvector GENERATED ALWAYS AS (
        setweight(to_tsvector('english', coalesce(title, '')), 'A')
        || setweight(to_tsvector('english', coalesce(content, '')), 'B')
    ) STORED,
    updated_at timestamptz NOT NULL DEFAULT now(),
    UNIQUE (department_id, drive_file_id)
);

CREATE INDEX drive_documents_search_idx ON drive_documents USING gin (search);

ALTER TABLE drive_documents ENABLE ROW LEVEL SECURITY;
ALTER TABLE drive_documents FORCE ROW LEVEL SECURITY;
CREATE POLICY tenant_isolation ON drive_documents
    USING (department_id = current_setting('app.department_id', true))
    WITH CHECK (department_id = current_setting('app.department_id', true));
