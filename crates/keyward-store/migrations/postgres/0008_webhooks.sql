-- Webhooks: subscriptions to a workspace's audit events, and their delivery attempts.
-- PostgreSQL flavour; must stay column-for-column identical to
-- migrations/sqlite/0008_webhooks.sql.

CREATE TABLE webhooks (
    id              TEXT COLLATE "C" NOT NULL PRIMARY KEY,
    workspace_id    TEXT COLLATE "C" NOT NULL REFERENCES workspaces (id),
    url             TEXT    NOT NULL,
    -- JSON array of event names: audit actions, `key.*`, or `*`.
    events          TEXT    NOT NULL,
    -- The signing secret: needed in the clear to sign (shown once, at creation).
    secret          TEXT    NOT NULL,
    created_at      BIGINT  NOT NULL,
    -- The workspace's last audit seq handled (delivered, or not subscribed to).
    delivered_seq   BIGINT  NOT NULL,
    -- Consecutive failed attempts at the next event, and when to try it again (unix ms).
    failures        INTEGER NOT NULL DEFAULT 0,
    next_attempt_at BIGINT  NOT NULL DEFAULT 0,
    -- A node delivering holds the webhook until then (unix ms), so no two deliver at once.
    lease_until     BIGINT  NOT NULL DEFAULT 0
);
CREATE INDEX webhooks_workspace_idx ON webhooks (workspace_id, id);

CREATE TABLE webhook_deliveries (
    id           TEXT COLLATE "C" NOT NULL PRIMARY KEY,
    webhook_id   TEXT COLLATE "C" NOT NULL,
    workspace_id TEXT COLLATE "C" NOT NULL,
    event_id     TEXT    NOT NULL,
    event        TEXT    NOT NULL,
    attempt      INTEGER NOT NULL,
    at           BIGINT  NOT NULL,
    -- The HTTP status answered, if any; `error` says why there was none or why it failed.
    status       INTEGER,
    error        TEXT,
    duration_ms  BIGINT  NOT NULL,
    succeeded    BOOLEAN NOT NULL
);
CREATE INDEX webhook_deliveries_webhook_idx ON webhook_deliveries (webhook_id, id);
