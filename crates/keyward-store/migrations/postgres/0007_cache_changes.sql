-- The change feed: every change that a node's in-memory caches must not outlive, written by
-- triggers in the transaction that makes the change, so no writer (another node, the CLI, an
-- operator's SQL) can change a key without the other nodes hearing of it. Each node reads the
-- rows after the last one it has seen and forgets what they name; a notification on channel
-- `keyward_cache_changes` (sent at commit, one per transaction) wakes them at once. Must stay
-- column-for-column identical to migrations/sqlite/0007_cache_changes.sql.
--
-- kind:   'key' (target: the stored digest, lowercase hex), 'api', 'project' or 'root_key'
--         (target: the id).
-- at:     unix ms when the row was written; rows older than an hour are pruned.
--
-- Sequence numbers are taken at insert and become visible at commit, so a reader can see
-- seq 8 before seq 7: readers keep reading above a gap until it fills or is old enough to be
-- a rolled-back transaction's (keyward_core::changes::FeedCursor).
--
-- A new column on keys, apis, projects or root_keys that a cached verdict depends on must be
-- added to the trigger's WHEN below. The usage columns are left out on purpose (every node
-- writes them every second, and the caches do not hold them), except usage_refilled_at, which
-- changes only when a quota is reset (PATCH usage_limit) or refilled: the other nodes then
-- reload the key and take the newer quota.

CREATE TABLE cache_changes (
    seq    BIGSERIAL NOT NULL PRIMARY KEY,
    kind   TEXT      NOT NULL,
    target TEXT      NOT NULL,
    at     BIGINT    NOT NULL
);
CREATE INDEX cache_changes_at_idx ON cache_changes (at);

-- Two functions, because a trigger's OLD has only its own table's columns.
CREATE FUNCTION keyward_key_cache_change() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO cache_changes (kind, target, at) VALUES (
        'key', encode(OLD.digest, 'hex'), (extract(epoch FROM clock_timestamp()) * 1000)::bigint
    );
    PERFORM pg_notify('keyward_cache_changes', '');
    RETURN NULL;
END;
$$;

-- TG_ARGV[0] is the kind: 'api', 'project' or 'root_key'.
CREATE FUNCTION keyward_cache_change() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO cache_changes (kind, target, at) VALUES (
        TG_ARGV[0], OLD.id, (extract(epoch FROM clock_timestamp()) * 1000)::bigint
    );
    PERFORM pg_notify('keyward_cache_changes', '');
    RETURN NULL;
END;
$$;

CREATE TRIGGER keys_cache_change AFTER UPDATE ON keys FOR EACH ROW
WHEN ((OLD.workspace_id, OLD.api_id, OLD.project_id, OLD.name, OLD.digest,
       OLD.digest_version, OLD.state, OLD.state_reason, OLD.permissions, OLD.roles, OLD.meta,
       OLD.expires_at, OLD.rate_limits, OLD.usage_limit, OLD.restrictions, OLD.rotated_from,
       OLD.rotated_to, OLD.updated_at, OLD.revoked_at, OLD.identity_id,
       OLD.usage_refilled_at)
      IS DISTINCT FROM
      (NEW.workspace_id, NEW.api_id, NEW.project_id, NEW.name, NEW.digest,
       NEW.digest_version, NEW.state, NEW.state_reason, NEW.permissions, NEW.roles, NEW.meta,
       NEW.expires_at, NEW.rate_limits, NEW.usage_limit, NEW.restrictions, NEW.rotated_from,
       NEW.rotated_to, NEW.updated_at, NEW.revoked_at, NEW.identity_id,
       NEW.usage_refilled_at))
EXECUTE FUNCTION keyward_key_cache_change();

CREATE TRIGGER keys_cache_delete AFTER DELETE ON keys FOR EACH ROW
EXECUTE FUNCTION keyward_key_cache_change();

CREATE TRIGGER apis_cache_change AFTER UPDATE ON apis FOR EACH ROW
EXECUTE FUNCTION keyward_cache_change('api');

CREATE TRIGGER projects_cache_change AFTER UPDATE ON projects FOR EACH ROW
EXECUTE FUNCTION keyward_cache_change('project');

CREATE TRIGGER root_keys_cache_change AFTER UPDATE ON root_keys FOR EACH ROW
EXECUTE FUNCTION keyward_cache_change('root_key');
