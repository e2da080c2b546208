-- Access rules (issue 3): a key's counter identity, and the usage state flushed in batches.
--
-- identity_id: the key whose rate-limit and quota counters this key shares. A new key's is
-- its own id; a rotated key inherits its predecessor's, so counters carry over.
-- usage_remaining / usage_refilled_at: the quota as last flushed from memory (NULL: never
-- flushed, read usage_limit.remaining). last_used_ip: the request ip of the last use.
ALTER TABLE keys ADD COLUMN identity_id TEXT COLLATE "C";
UPDATE keys SET identity_id = id;
ALTER TABLE keys ALTER COLUMN identity_id SET NOT NULL;
ALTER TABLE keys ADD COLUMN usage_remaining BIGINT;
ALTER TABLE keys ADD COLUMN usage_refilled_at BIGINT;
ALTER TABLE keys ADD COLUMN last_used_ip TEXT;
CREATE INDEX keys_identity_idx ON keys (identity_id);
