-- The access log as batches: one row per flush and workspace holding its events encoded
-- (keyward_core::access_log), instead of a row per event, which cost more writer CPU than
-- the verification it recorded. SQLite flavour; must stay column-for-column identical to
-- migrations/postgres/0005_access_log_batches.sql.
--
-- Events recorded by pre-release builds in the old per-event table are not carried over;
-- usage counts (usage_counts) are unchanged.
DROP TABLE verifications;

-- Ids only grow (AUTOINCREMENT never reuses one, even after pruning), so event ids
-- (`batch << 20 | index`) sort newest last and are never handed out twice.
CREATE TABLE verification_batches (
    id           INTEGER PRIMARY KEY AUTOINCREMENT,
    workspace_id TEXT    NOT NULL,
    first_time   INTEGER NOT NULL,
    last_time    INTEGER NOT NULL,
    events       INTEGER NOT NULL,
    node         TEXT    NOT NULL,
    data         BLOB    NOT NULL
);
CREATE INDEX verification_batches_workspace_idx ON verification_batches (workspace_id, id);

-- Which batches mention an id (api, key or project) or a code: listings filtered by one
-- read only those batches.
CREATE TABLE verification_terms (
    workspace_id TEXT    NOT NULL,
    term         TEXT    NOT NULL,
    batch_id     INTEGER NOT NULL,
    PRIMARY KEY (workspace_id, term, batch_id)
) WITHOUT ROWID;
CREATE INDEX verification_terms_batch_idx ON verification_terms (batch_id);
