-- The rules of the criterion case `hot_with_rules`, on every key of a seeded data dir: two rate
-- limits and a quota high enough that every call is admitted and charged, IP and path
-- restrictions that the load's requests match (ip 10.1.2.3, path /v1/orders/42). Used by the
-- keyward-verify-rules target (targets.sh) and the PGO training (pgo-build.sh):
-- sqlite3 DATA_DIR/keyward.db < bench/rules.sql
UPDATE keys SET
    rate_limits = '[{"name":"burst","limit":1000000000,"period":"1s"},{"name":"hourly","limit":1000000000,"period":"1h"}]',
    usage_limit = '{"remaining":4000000000000000000}',
    usage_remaining = 4000000000000000000,
    restrictions = '{"ips":["10.0.0.0/8","2001:db8::/32"],"paths":["/v1/orders/*"]}';
