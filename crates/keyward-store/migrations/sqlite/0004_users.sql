-- Portal accounts, login sessions and one-time setup links. SQLite flavour; must stay
-- column-for-column identical to migrations/postgres/0004_users.sql.

CREATE TABLE users (
    id            TEXT    NOT NULL PRIMARY KEY,
    workspace_id  TEXT    NOT NULL REFERENCES workspaces (id),
    email         TEXT    NOT NULL,
    role          TEXT    NOT NULL CHECK (role IN ('operator', 'developer')),
    password_hash TEXT,
    disabled      INTEGER NOT NULL DEFAULT 0,
    created_at    INTEGER NOT NULL,
    CONSTRAINT users_workspace_email_key UNIQUE (workspace_id, email)
);
CREATE INDEX users_email_idx ON users (email);

-- Session ids are stored only as their SHA-256 digest.
CREATE TABLE sessions (
    digest       BLOB    NOT NULL PRIMARY KEY,
    user_id      TEXT    NOT NULL REFERENCES users (id),
    workspace_id TEXT    NOT NULL,
    csrf_token   TEXT    NOT NULL,
    created_at   INTEGER NOT NULL,
    last_seen_at INTEGER NOT NULL,
    expires_at   INTEGER NOT NULL
);
CREATE INDEX sessions_user_idx ON sessions (user_id);

-- One-time account setup links (first operator, invitations), stored as SHA-256 digests.
CREATE TABLE setup_tokens (
    digest       BLOB    NOT NULL PRIMARY KEY,
    workspace_id TEXT    NOT NULL REFERENCES workspaces (id),
    role         TEXT    NOT NULL CHECK (role IN ('operator', 'developer')),
    email        TEXT,
    created_at   INTEGER NOT NULL,
    expires_at   INTEGER NOT NULL,
    used_at      INTEGER
);
