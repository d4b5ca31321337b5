-- search_documents ranks a bounded set of candidates (aio_agent/documents.py): the documents whose
-- title matches come first. This small vector and its index find them without reading each
-- matching document's whole-text vector (a weight-restricted query on `search` would).
ALTER TABLE drive_documents
    ADD COLUMN title_search tsvector GENERATED ALWAYS AS (
        to_tsvector('english', coalesce(title, ''))
    ) STORED;

CREATE INDEX drive_documents_title_search_idx ON drive_documents USING gin (title_search);
