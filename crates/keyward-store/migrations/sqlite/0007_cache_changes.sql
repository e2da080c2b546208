-- The change feed: every change that a node's in-memory caches must not outlive, written by
-- triggers in the transaction that makes the change, so no writer (another node, the CLI, an
-- operator's SQL) can change a key without the other nodes hearing of it. Each node reads the
-- rows after the last one it has seen and forgets what they name. Must stay column-for-column
-- identical to migrations/postgres/0007_cache_changes.sql.
--
-- kind:   'key' (target: the stored digest, lowercase hex), 'api', 'project' or 'root_key'
--         (target: the id).
-- at:     unix ms when the row was written; rows older than an hour are pruned.
--
-- A new column on keys, apis, projects or root_keys that a cached verdict depends on must be
-- added to the trigger's WHEN below. The usage columns are left out on purpose (every node
-- writes them every second, and the caches do not hold them), except usage_refilled_at, which
-- changes only when a quota is reset (PATCH usage_limit) or refilled: the other nodes then
-- reload the key and take the newer quota.

CREATE TABLE cache_changes (
    seq    INTEGER NOT NULL PRIMARY KEY AUTOINCREMENT,
    kind   TEXT    NOT NULL,
    target TEXT    NOT NULL,
    at     INTEGER NOT NULL
);
CREATE INDEX cache_changes_at_idx ON cache_changes (at);

CREATE TRIGGER keys_cache_change AFTER UPDATE ON keys
WHEN OLD.workspace_id IS NOT NEW.workspace_id OR OLD.api_id IS NOT NEW.api_id
    OR OLD.project_id IS NOT NEW.project_id OR OLD.name IS NOT NEW.name
    OR OLD.digest IS NOT NEW.digest OR OLD.digest_version IS NOT NEW.digest_version
    OR OLD.state IS NOT NEW.state OR OLD.state_reason IS NOT NEW.state_reason
    OR OLD.permissions IS NOT NEW.permissions OR OLD.roles IS NOT NEW.roles
    OR OLD.meta IS NOT NEW.meta OR OLD.expires_at IS NOT NEW.expires_at
    OR OLD.rate_limits IS NOT NEW.rate_limits OR OLD.usage_limit IS NOT NEW.usage_limit
    OR OLD.restrictions IS NOT NEW.restrictions OR OLD.rotated_from IS NOT NEW.rotated_from
    OR OLD.rotated_to IS NOT NEW.rotated_to OR OLD.updated_at IS NOT NEW.updated_at
    OR OLD.revoked_at IS NOT NEW.revoked_at OR OLD.identity_id IS NOT NEW.identity_id
    OR OLD.usage_refilled_at IS NOT NEW.usage_refilled_at
BEGIN
    INSERT INTO cache_changes (kind, target, at)
        VALUES ('key', lower(hex(OLD.digest)), CAST(strftime('%s', 'now') AS INTEGER) * 1000);
END;

CREATE TRIGGER keys_cache_delete AFTER DELETE ON keys
BEGIN
    INSERT INTO cache_changes (kind, target, at)
        VALUES ('key', lower(hex(OLD.digest)), CAST(strftime('%s', 'now') AS INTEGER) * 1000);
END;

CREATE TRIGGER apis_cache_change AFTER UPDATE ON apis
BEGIN
    INSERT INTO cache_changes (kind, target, at)
        VALUES ('api', OLD.id, CAST(strftime('%s', 'now') AS INTEGER) * 1000);
END;

CREATE TRIGGER projects_cache_change AFTER UPDATE ON projects
BEGIN
    INSERT INTO cache_changes (kind, target, at)
        VALUES ('project', OLD.id, CAST(strftime('%s', 'now') AS INTEGER) * 1000);
END;

CREATE TRIGGER root_keys_cache_change AFTER UPDATE ON root_keys
BEGIN
    INSERT INTO cache_changes (kind, target, at)
        VALUES ('root_key', OLD.id, CAST(strftime('%s', 'now') AS INTEGER) * 1000);
END;
