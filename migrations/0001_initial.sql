-- The bookkeeping every later migration builds on: facts about the store
-- itself (when it was created). The applied versions are recorded by the
-- migration runner in schema_migrations.
CREATE TABLE store_info (
    key   TEXT PRIMARY KEY,
    value TEXT NOT NULL
);

INSERT INTO store_info (key, value)
VALUES ('created_at', strftime('%Y-%m-%dT%H:%M:%SZ', 'now'));
