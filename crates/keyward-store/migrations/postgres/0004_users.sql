-- Portal accounts, login sessions and one-time setup links. PostgreSQL flavour; must stay
-- column-for-column identical to migrations/sqlite/0004_users.sql.

CREATE TABLE users (
    id            TEXT COLLATE "C" NOT NULL PRIMARY KEY,
    workspace_id  TEXT COLLATE "C" NOT NULL REFERENCES workspaces (id),
    email         TEXT    NOT NULL,
    role          TEXT    NOT NULL CHECK (role IN ('operator', 'developer')),
    password_hash TEXT,
    disabled      BOOLEAN NOT NULL DEFAULT FALSE,
    created_at    BIGINT  NOT NULL,
    CONSTRAINT users_workspace_email_key UNIQUE (workspace_id, email)
);
CREATE INDEX users_email_idx ON users (email);

-- Session ids are stored only as their SHA-256 digest.
CREATE TABLE sessions (
    digest       BYTEA   NOT NULL PRIMARY KEY,
    user_id      TEXT    NOT NULL REFERENCES users (id),
    workspace_id TEXT    NOT NULL,
    csrf_token   TEXT    NOT NULL,
    created_at   BIGINT  NOT NULL,
    last_seen_at BIGINT  NOT NULL,
    expires_at   BIGINT  NOT NULL
);
CREATE INDEX sessions_user_idx ON sessions (user_id);

-- One-time account setup links (first operator, invitations), stored as SHA-256 digests.
CREATE TABLE setup_tokens (
    digest       BYTEA   NOT NULL PRIMARY KEY,
    workspace_id TEXT    NOT NULL REFERENCES workspaces (id),
    role         TEXT    NOT NULL CHECK (role IN ('operator', 'developer')),
    email        TEXT,
    created_at   BIGINT  NOT NULL,
    expires_at   BIGINT  NOT NULL,
    used_at      BIGINT 
);
