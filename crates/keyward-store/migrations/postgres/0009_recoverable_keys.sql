-- Recoverable keys: each workspace's data key, sealed by the master key (which is not in the
-- database), and the keys' plaintext copies sealed by it. PostgreSQL flavour; must stay
-- column-for-column identical to migrations/sqlite/0009_recoverable_keys.sql.

CREATE TABLE data_keys (
    workspace_id TEXT COLLATE "C" NOT NULL PRIMARY KEY REFERENCES workspaces (id),
    sealed       TEXT    NOT NULL,
    created_at   BIGINT  NOT NULL
);

CREATE TABLE key_copies (
    key_id       TEXT COLLATE "C" NOT NULL PRIMARY KEY,
    workspace_id TEXT COLLATE "C" NOT NULL,
    sealed       TEXT    NOT NULL
);
