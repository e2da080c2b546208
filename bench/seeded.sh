# Helpers over a data dir made by `bench_seed`, sourced by targets.sh (the harness's targets)
# and pgo-build.sh (the PGO training). They need sqlite3 and return non-zero on failure.

# seeded_rules SEED DIR: DIR becomes a copy of SEED with the rules of bench/rules.sql on every
# key, and DIR/load_requests.txt the lines of SEED/load_keys.txt with the matching ip and path
# (keys.lua and pgo-load.lua write each line into {"key":"<line>"}, so `KEY","ip":"…` adds
# fields).
seeded_rules() {
    local seed=$1 dir=$2
    rm -rf -- "$dir" && cp -a -- "$seed" "$dir" || return 1
    sqlite3 "$dir/keyward.db" <"$(dirname "${BASH_SOURCE[0]}")/rules.sql" || return 1
    sed 's|$|","ip":"10.1.2.3","path":"/v1/orders/42|' "$seed/load_keys.txt" >"$dir/load_requests.txt" || return 1
    chmod 600 "$dir/load_requests.txt"
}

# seeded_api_id DIR: prints the id of the api bench_seed created in DIR.
seeded_api_id() {
    local id
    id="$(sqlite3 "$1/keyward.db" "SELECT id FROM apis WHERE deleted_at IS NULL LIMIT 1;")" || return 1
    [[ "$id" == api_* ]] || return 1
    printf '%s\n' "$id"
}

# seeded_gateway DIR LISTEN UPSTREAM: DIR/gateway.toml, a gateway on LISTEN (host:port) for the
# seeded api, reading the key from x-api-key and sending every path to UPSTREAM (a URL).
seeded_gateway() {
    local dir=$1 listen=$2 upstream=$3 api_id
    api_id="$(seeded_api_id "$dir")" || return 1
    printf '%s\n' "listen = \"$listen\"" "api_id = \"$api_id\"" 'key_from = ["header:x-api-key"]' \
        '[[route]]' 'path = "/**"' "upstream = \"$upstream\"" >"$dir/gateway.toml"
}
