# keyward's targets for the shared load harness: pass this file as EXTRA_TARGETS to run.sh.
# Sourced by run.sh after its set-up; see bench/README.md for the commands.
#
#   keyward-verify   `keyward serve --workers $SRV_N`, POST /v1/keys/verify {"key": …} with the
#                    root key as bearer token; 1000 keys (of 100k in the store) in rotation.
#                    Shaped like hello-post / verify, compared with hello-post.
#   keyward-verify-rules  the same with every key carrying issue 3's rules (two rate limits high
#                    enough to admit, a quota, IP and path restrictions) and each request the
#                    matching ip and path; compared with keyward-verify (target: ≤ 1.3× its
#                    µs per request).
#   keyward-verify-rules-redis  keyward-verify-rules with the counters shared through Redis
#                    (--redis-url $KW_REDIS_URL, a fresh prefix per round): one Lua script per
#                    verify. Compared with keyward-verify-rules. Redis is not pinned, and its CPU
#                    is not in "srv µs/req": compare req/s.
#   keyward-gw       `keyward gateway --workers $SRV_N` in front of the same `hello` upstream
#                    (both pinned to the server core), key in x-api-key, every one of the
#                    seeded keys limited to $BURST per $BURST/$RATE s (GCRA: $RATE/s, burst
#                    $BURST); 1000 keys in rotation. Shaped like nginx-gw, compared with hello.
#   keyward-gw-reject  the same gateway, all keys unknown -> 401 (like nginx-gw-reject).
#
# Knobs (env):
#   KW_REPO        the keyward checkout to build (default: the repo holding this file)
#   KW_BIN         keyward binary (default: $CARGO_TARGET_DIR/release/keyward, which run.sh points
#                  at $BENCH_WORK/target; built from KW_REPO unless SKIP_BUILD=1)
#   KW_SEED_BIN    the seeder (default: $CARGO_TARGET_DIR/release/examples/bench_seed)
#   KW_SEED_DIR    seeded data dir, reused across runs (default: /dev/shm/kw-bench-seed, tmpfs so
#                  that seeding does not wait on fsync)
#   KW_SEED_KEYS   keys in the store (default: 100000)
#   P_KW_VERIFY    port (default: 18120; run.sh's own ports are 18080-18110)
#   KW_GW_DIR      per-round copy of the seeded data dir with the rate limits set, for the
#                  gateway targets (default: /dev/shm/kw-bench-gw)
#   P_KW_GW        gateway port (default: 18121)
#   KW_RULES_DIR   per-round copy of the seeded data dir with the rules set, for
#                  keyward-verify-rules (default: /dev/shm/kw-bench-rules; port P_KW_VERIFY)
#
# Security note: LOAD_AUTH (the root key) is exported for every target, so hello-post and
# verify receive byte-for-byte the same requests as keyward-verify. The key never appears on a
# command line; it is read from a 0600 file.

# This file's directory (its helpers), whichever checkout KW_REPO builds.
KW_BENCH_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source=seeded.sh
source "$KW_BENCH_DIR/seeded.sh"
KW_REPO="${KW_REPO:-$(cd "$KW_BENCH_DIR/.." && pwd)}"
KW_BIN="${KW_BIN:-$CARGO_TARGET_DIR/release/keyward}"
KW_SEED_BIN="${KW_SEED_BIN:-$CARGO_TARGET_DIR/release/examples/bench_seed}"
KW_SEED_DIR="${KW_SEED_DIR:-/dev/shm/kw-bench-seed}"
KW_SEED_KEYS="${KW_SEED_KEYS:-100000}"
P_KW_VERIFY="${P_KW_VERIFY:-18120}"
KW_GW_DIR="${KW_GW_DIR:-/dev/shm/kw-bench-gw}"
P_KW_GW="${P_KW_GW:-18121}"
KW_RULES_DIR="${KW_RULES_DIR:-/dev/shm/kw-bench-rules}"
KW_REDIS_URL="${KW_REDIS_URL:-redis://127.0.0.1:6379}"

EXTRA_TARGET_NAMES="${EXTRA_TARGET_NAMES:-} keyward-verify keyward-verify-rules keyward-verify-rules-redis keyward-gw keyward-gw-reject"

kw_build() {
    log "keyward: cargo build --release -p keyward --bin keyward --example bench_seed (in $KW_REPO, target $CARGO_TARGET_DIR)"
    (cd "$KW_REPO" && timeout 1800 cargo build --release --locked -p keyward --bin keyward --example bench_seed \
        >"$OUT/logs/keyward-build.log" 2>&1) || die "keyward build failed, see $OUT/logs/keyward-build.log"
}

kw_seed() {  # seeds into a scratch dir, then renames it, so a half-seeded dir is never reused
    local tmp="$KW_SEED_DIR.partial"
    [[ -n "$KW_SEED_DIR" && "$KW_SEED_DIR" != / ]] || die "KW_SEED_DIR is not set"
    rm -rf -- "$tmp" "$KW_SEED_DIR"
    log "keyward: seeding $KW_SEED_KEYS keys into $KW_SEED_DIR"
    timeout 1800 "$KW_SEED_BIN" --data-dir "$tmp" --keys "$KW_SEED_KEYS" >"$OUT/logs/keyward-seed.log" 2>&1 \
        || die "keyward seeding failed, see $OUT/logs/keyward-seed.log"
    echo "$KW_SEED_KEYS" >"$tmp/seed.keys"
    mv -- "$tmp" "$KW_SEED_DIR"
}

if [[ "${SKIP_BUILD:-0}" != 1 || ! -x "$KW_BIN" || ! -x "$KW_SEED_BIN" ]]; then
    kw_build
fi
[[ -x "$KW_BIN" ]] || die "missing $KW_BIN"
if [[ "$(cat "$KW_SEED_DIR/seed.keys" 2>/dev/null)" != "$KW_SEED_KEYS" || ! -s "$KW_SEED_DIR/load_keys.txt" ]]; then
    kw_seed
else
    log "keyward: reusing the seeded data dir $KW_SEED_DIR ($KW_SEED_KEYS keys)"
fi
LOAD_AUTH="$(cat "$KW_SEED_DIR/root_key.txt")"
export LOAD_AUTH
{
    echo "keyward: $("$KW_BIN" --version 2>&1) at $(cd "$KW_REPO" && git rev-parse --short HEAD 2>/dev/null)$(cd "$KW_REPO" && git diff --quiet HEAD 2>/dev/null || echo ' (with uncommitted changes)'); binary $KW_BIN"
    echo "keyward seed: $KW_SEED_DIR ($KW_SEED_KEYS keys)"
} >>"$OUT/env.txt"

start_extra_target() {
    case "$1" in
        keyward-verify)
            DESC="keyward serve --workers $SRV_N: POST /v1/keys/verify, bearer root key, 1000 of $KW_SEED_KEYS keys"
            BASE=hello-post; MODE=json; LPATH=/v1/keys/verify; PORT=$P_KW_VERIFY
            KEYS_FILE="$KW_SEED_DIR/load_keys.txt"; WANT=200; EXPECT=2xx
            # verify answers 200 with {"valid":false,"code":"NOT_FOUND"} for an unknown key
            BAD_KEY="$(head -1 "$KW_SEED_DIR/unknown_keys.txt")"; BAD_WANT=200
            port_free "$P_KW_VERIFY" || log "  WARNING: port $P_KW_VERIFY is busy before $1"
            launch keyward-verify env -u KEYWARD_DATABASE_URL -u KEYWARD_DATABASE_URL_FILE -u KEYWARD_PEPPER_FILE \
                "$KW_BIN" serve --listen "127.0.0.1:$P_KW_VERIFY" --data-dir "$KW_SEED_DIR" --workers "$SRV_N"
            return 0 ;;
        keyward-verify-rules)
            kw_rules_prepare || return 1
            DESC="keyward serve --workers $SRV_N: verify as keyward-verify, keys with 2 rate limits, a quota, IP and path restrictions"
            BASE=keyward-verify; MODE=json; LPATH=/v1/keys/verify; PORT=$P_KW_VERIFY
            KEYS_FILE="$KW_RULES_DIR/load_requests.txt"; WANT=200; EXPECT=2xx
            BAD_KEY="$(head -1 "$KW_SEED_DIR/unknown_keys.txt")"; BAD_WANT=200
            port_free "$P_KW_VERIFY" || log "  WARNING: port $P_KW_VERIFY is busy before $1"
            launch keyward-verify-rules env -u KEYWARD_DATABASE_URL -u KEYWARD_DATABASE_URL_FILE -u KEYWARD_PEPPER_FILE \
                "$KW_BIN" serve --listen "127.0.0.1:$P_KW_VERIFY" --data-dir "$KW_RULES_DIR" --workers "$SRV_N"
            return 0 ;;
        keyward-verify-rules-redis)
            kw_rules_prepare || return 1
            DESC="keyward serve --workers $SRV_N: verify as keyward-verify-rules, counters shared through Redis"
            BASE=keyward-verify-rules; MODE=json; LPATH=/v1/keys/verify; PORT=$P_KW_VERIFY
            KEYS_FILE="$KW_RULES_DIR/load_requests.txt"; WANT=200; EXPECT=2xx
            BAD_KEY="$(head -1 "$KW_SEED_DIR/unknown_keys.txt")"; BAD_WANT=200
            port_free "$P_KW_VERIFY" || log "  WARNING: port $P_KW_VERIFY is busy before $1"
            launch keyward-verify-rules-redis env -u KEYWARD_DATABASE_URL -u KEYWARD_DATABASE_URL_FILE -u KEYWARD_PEPPER_FILE \
                KEYWARD_REDIS_PREFIX="kwbench-$$-$RANDOM" \
                "$KW_BIN" serve --listen "127.0.0.1:$P_KW_VERIFY" --data-dir "$KW_RULES_DIR" --workers "$SRV_N" \
                --redis-url "$KW_REDIS_URL"
            return 0 ;;
        keyward-gw|keyward-gw-reject)
            kw_gw_prepare || return 1
            if [[ "$1" == keyward-gw ]]; then
                DESC="keyward gateway --workers $SRV_N: x-api-key, $KW_SEED_KEYS keys limited $RATE/s burst $BURST -> hello"
                KEYS_FILE="$KW_GW_DIR/load_keys.txt"; WANT=200; EXPECT=2xx
                BAD_KEY="$(head -1 "$KW_GW_DIR/unknown_keys.txt")"; BAD_WANT=401
            else
                DESC="keyward gateway, all keys unknown -> 401 (reject path)"
                KEYS_FILE="$KW_GW_DIR/unknown_keys.txt"; WANT=401; EXPECT=non-2xx; BAD_WANT=""
            fi
            BASE=hello; MODE=header; LPATH=/; PORT=$P_KW_GW
            port_free "$P_KW_GW" || log "  WARNING: port $P_KW_GW is busy before $1"
            start_hello_upstream
            launch "$1" env -u KEYWARD_DATABASE_URL -u KEYWARD_DATABASE_URL_FILE -u KEYWARD_PEPPER_FILE \
                "$KW_BIN" gateway --config "$KW_GW_DIR/gateway.toml" --data-dir "$KW_GW_DIR" --workers "$SRV_N"
            return 0 ;;
        *) return 1 ;;
    esac
}

# A fresh copy of the seeded data dir for each rules round, every key given the rules of
# `hot_with_rules` in the criterion benchmark (limits and quota high enough that every call is
# admitted and charged), and request lines that carry the matching ip and path. keys.lua writes
# each line into {"key":"<line>"}, so a line `KEY","ip":"…","path":"…` adds those two fields.
kw_rules_prepare() {
    [[ -n "$KW_RULES_DIR" && "$KW_RULES_DIR" != / ]] || die "KW_RULES_DIR is not set"
    command -v sqlite3 >/dev/null || die "missing sqlite3 (apt-get install -y sqlite3)"
    seeded_rules "$KW_SEED_DIR" "$KW_RULES_DIR" || die "cannot make the rules copy $KW_RULES_DIR"
}

# A fresh copy of the seeded data dir for each gateway round (so no round inherits another's
# counters), every key given the harness's per-key limit, and the gateway config beside it.
kw_gw_prepare() {
    local period_ms
    [[ -n "$KW_GW_DIR" && "$KW_GW_DIR" != / ]] || die "KW_GW_DIR is not set"
    command -v sqlite3 >/dev/null || die "missing sqlite3 (apt-get install -y sqlite3)"
    rm -rf -- "$KW_GW_DIR"
    cp -a -- "$KW_SEED_DIR" "$KW_GW_DIR" || die "cannot copy $KW_SEED_DIR to $KW_GW_DIR"
    # GCRA "limit per period" has burst = limit: limit $BURST per ($BURST / $RATE) s is
    # $RATE/s with burst $BURST, the same as nginx's limit_req and the verify baseline.
    period_ms=$(( BURST * 1000 / RATE ))
    sqlite3 "$KW_GW_DIR/keyward.db" \
        "UPDATE keys SET rate_limits = '[{\"name\":\"default\",\"limit\":$BURST,\"period\":\"${period_ms}ms\"}]';" \
        || die "cannot set the rate limits in $KW_GW_DIR/keyward.db"
    seeded_gateway "$KW_GW_DIR" "127.0.0.1:$P_KW_GW" "http://127.0.0.1:$P_HELLO" \
        || die "no api in $KW_GW_DIR/keyward.db"
}
