-- keyward schema, SQLite flavour. Timestamps are unix milliseconds; structured fields are
-- JSON text. Ids are base62 and sort in byte order (SQLite's BINARY collation). Must stay
-- column-for-column identical to migrations/postgres/0001_init.sql.

CREATE TABLE workspaces (
    id         TEXT    NOT NULL PRIMARY KEY,
    name       TEXT    NOT NULL,
    created_at INTEGER NOT NULL,
    CONSTRAINT workspaces_name_key UNIQUE (name)
);

CREATE TABLE root_keys (
    id             TEXT    NOT NULL PRIMARY KEY,
    workspace_id   TEXT    NOT NULL REFERENCES workspaces (id),
    name           TEXT    NOT NULL,
    start          TEXT    NOT NULL,
    digest         BLOB    NOT NULL,
    digest_version TEXT    NOT NULL,
    permissions    TEXT    NOT NULL,
    created_at     INTEGER NOT NULL,
    revoked_at     INTEGER,
    CONSTRAINT root_keys_digest_key UNIQUE (digest)
);
CREATE INDEX root_keys_workspace_id_idx ON root_keys (workspace_id, id);

CREATE TABLE apis (
    id                  TEXT    NOT NULL PRIMARY KEY,
    workspace_id        TEXT    NOT NULL REFERENCES workspaces (id),
    name                TEXT    NOT NULL,
    prefix              TEXT    NOT NULL,
    permissions         TEXT    NOT NULL,
    roles               TEXT    NOT NULL,
    default_permissions TEXT    NOT NULL,
    default_rate_limits TEXT    NOT NULL,
    default_usage_limit TEXT,
    policies            TEXT    NOT NULL,
    created_at          INTEGER NOT NULL,
    updated_at          INTEGER NOT NULL,
    deleted_at          INTEGER
);
CREATE UNIQUE INDEX apis_workspace_id_idx ON apis (workspace_id, id);

CREATE TABLE projects (
    id           TEXT    NOT NULL PRIMARY KEY,
    workspace_id TEXT    NOT NULL REFERENCES workspaces (id),
    name         TEXT    NOT NULL,
    external_id  TEXT,
    meta         TEXT    NOT NULL,
    owner        TEXT,
    rate_limits  TEXT    NOT NULL,
    created_at   INTEGER NOT NULL,
    updated_at   INTEGER NOT NULL,
    deleted_at   INTEGER
);
CREATE UNIQUE INDEX projects_workspace_id_idx ON projects (workspace_id, id);

CREATE TABLE keys (
    id             TEXT    NOT NULL PRIMARY KEY,
    workspace_id   TEXT    NOT NULL REFERENCES workspaces (id),
    api_id         TEXT    NOT NULL,
    project_id     TEXT,
    name           TEXT    NOT NULL,
    start          TEXT    NOT NULL,
    digest         BLOB    NOT NULL,
    digest_version TEXT    NOT NULL,
    state          TEXT    NOT NULL CHECK (state IN ('active', 'disabled', 'revoked')),
    state_reason   TEXT,
    permissions    TEXT    NOT NULL,
    roles          TEXT    NOT NULL,
    meta           TEXT    NOT NULL,
    expires_at     INTEGER,
    rate_limits    TEXT    NOT NULL,
    usage_limit    TEXT,
    restrictions   TEXT,
    rotated_from   TEXT,
    rotated_to     TEXT,
    created_at     INTEGER NOT NULL,
    updated_at     INTEGER NOT NULL,
    revoked_at     INTEGER,
    last_used_at   INTEGER,
    CONSTRAINT keys_digest_key UNIQUE (digest),
    -- Security: a key can only point at an api or project of its own workspace.
    CONSTRAINT keys_api_fkey FOREIGN KEY (workspace_id, api_id)
        REFERENCES apis (workspace_id, id),
    CONSTRAINT keys_project_fkey FOREIGN KEY (workspace_id, project_id)
        REFERENCES projects (workspace_id, id)
);
CREATE INDEX keys_workspace_id_idx ON keys (workspace_id, id);
CREATE INDEX keys_workspace_api_idx ON keys (workspace_id, api_id, id);
CREATE INDEX keys_workspace_project_idx ON keys (workspace_id, project_id, id);
