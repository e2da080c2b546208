-- Records: the access log, usage counts and the audit log. SQLite flavour; must stay
-- column-for-column identical to migrations/postgres/0003_records.sql.

-- One row per verification. Ids sort by time (`ver_` + time + node + sequence), so the
-- primary key serves newest-first listings, cursors and pruning by age alike.
CREATE TABLE verifications (
    id           TEXT    NOT NULL PRIMARY KEY,
    workspace_id TEXT    NOT NULL,
    time         INTEGER NOT NULL,
    api_id       TEXT,
    key_id       TEXT,
    project_id   TEXT,
    code         TEXT    NOT NULL,
    ip           TEXT,
    method       TEXT,
    path         TEXT,
    origin       TEXT,
    node         TEXT    NOT NULL
) WITHOUT ROWID;
CREATE INDEX verifications_workspace_idx ON verifications (workspace_id, id);
CREATE INDEX verifications_key_idx ON verifications (workspace_id, key_id, id);

-- Exact counts per (key or none) × code × bucket, for three bucket widths. Absent ids are
-- '' so they can be part of the primary key.
CREATE TABLE usage_counts (
    workspace_id TEXT    NOT NULL,
    granularity  TEXT    NOT NULL CHECK (granularity IN ('minute', 'hour', 'day')),
    bucket       INTEGER NOT NULL,
    api_id       TEXT    NOT NULL,
    key_id       TEXT    NOT NULL,
    project_id   TEXT    NOT NULL,
    code         TEXT    NOT NULL,
    count        INTEGER NOT NULL,
    PRIMARY KEY (workspace_id, granularity, bucket, api_id, key_id, project_id, code)
) WITHOUT ROWID;

-- The audit log: one hash chain per workspace, `seq` 1, 2, 3, … without gaps.
CREATE TABLE audit_log (
    workspace_id TEXT    NOT NULL,
    seq          INTEGER NOT NULL,
    id           TEXT    NOT NULL,
    time         INTEGER NOT NULL,
    actor        TEXT    NOT NULL,
    action       TEXT    NOT NULL,
    target       TEXT    NOT NULL,
    request_id   TEXT,
    ip           TEXT,
    changes      TEXT    NOT NULL,
    prev_hash    TEXT    NOT NULL,
    hash         TEXT    NOT NULL,
    PRIMARY KEY (workspace_id, seq)
);

-- The last link of each chain, updated in the same transaction as each append: appends lock
-- this row (so the chain never forks), and `audit verify` notices entries cut from the end.
CREATE TABLE audit_heads (
    workspace_id TEXT    NOT NULL PRIMARY KEY,
    seq          INTEGER NOT NULL,
    hash         TEXT    NOT NULL
);
