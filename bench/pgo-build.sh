#!/usr/bin/env bash
# A profile-guided (PGO) release build of keyward: ~10 % more HTTP verifies per second on one
# core than `cargo build --release` (bench/README.md, thirteenth session). Builds an
# instrumented binary, runs it under a training load (mostly verify, with and without rules;
# unknown keys, a few admin calls, the gateway and its reject path), then builds again with
# the profile. ~15 min on 2 cores. The mix favours `keyward serve`'s verify: a profile with as
# much gateway as verify traffic gained nothing on verify and ~6 % on the gateway.
#
# usage: bench/pgo-build.sh [OUT]      (OUT: where the binary goes; default target/pgo/keyward)
#
# Needs: llvm-profdata of the toolchain's LLVM (`rustup component add llvm-tools`), wrk, curl
# and sqlite3 (Debian: apt-get install -y wrk curl sqlite3). Scratch space: PGO_WORK (default
# target/pgo: two target dirs, the profiles, the training data dir). Ports PGO_PORT and
# PGO_PORT+1 (default 18190, 18191) on 127.0.0.1.
set -euo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
# shellcheck source=seeded.sh
source "$repo/bench/seeded.sh"
work="${PGO_WORK:-$repo/target/pgo}"
out="${1:-$work/keyward}"
port="${PGO_PORT:-18190}"
gw_port=$((port + 1))

die() { echo "pgo-build: $*" >&2; exit 1; }
log() { echo "pgo-build: $*" >&2; }

host="$(rustc -vV | sed -n 's/^host: //p')"
profdata="$(rustc --print sysroot)/lib/rustlib/$host/bin/llvm-profdata"
[[ -x "$profdata" ]] || die "no llvm-profdata in the toolchain: rustup component add llvm-tools"
for tool in wrk curl sqlite3; do
    command -v "$tool" >/dev/null || die "needs $tool (apt-get install -y wrk curl sqlite3)"
done

[[ -n "$work" && "$work" != / ]] || die "PGO_WORK must be a scratch directory"
profiles="$work/profiles"
data="$work/data"
rm -rf -- "$profiles" "$data" "$data-rules"
mkdir -p -- "$profiles"

log "1/4 instrumented build (target dir $work/gen)"
(cd "$repo" && RUSTFLAGS="-Cprofile-generate=$profiles" CARGO_TARGET_DIR="$work/gen" \
    cargo build --release --locked -p keyward --bin keyward --example bench_seed)
kw="$work/gen/release/keyward"
export LLVM_PROFILE_FILE="$profiles/%p-%m.profraw"
# Whatever this shell points keyward at, the training uses its own embedded store: no
# KEYWARD_* variable, and a working directory without a keyward.toml.
for var in $(compgen -e); do if [[ "$var" == KEYWARD_* ]]; then unset "$var"; fi; done
cd -- "$work"

log "2/4 training data: 50000 keys in $data, and a copy with rules on every key"
"$work/gen/release/examples/bench_seed" --data-dir "$data" --keys 50000 >/dev/null 2>&1
seeded_rules "$data" "$data-rules" || die "cannot make the rules copy $data-rules"
api_id="$(seeded_api_id "$data")" || die "no api in the training data"
seeded_gateway "$data" "127.0.0.1:$gw_port" "http://127.0.0.1:$port" || die "cannot write $data/gateway.toml"

pids=()
stop_all() {
    for pid in "${pids[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
    for pid in "${pids[@]}"; do wait "$pid" 2>/dev/null || true; done
    pids=()
}
# On any exit: the servers stopped, and the file holding the training root key removed.
trap 'stop_all; rm -f -- "$work/auth.header"' EXIT
started=0
start() { # url, command...: starts it and waits until url answers
    local url=$1; shift
    started=$((started + 1))
    "$@" >"$work/server-$started.log" 2>&1 &
    pids+=("$!")
    for _ in $(seq 100); do curl -s -o /dev/null "$url" && return 0; sleep 0.1; done
    die "$* did not start (see $work/server-$started.log)"
}
# Security: the root key goes to wrk and curl through the environment and a header file, never
# on a command line.
export AUTH
load() { # seconds, keys file, mode, path, url, expected answers (2xx or 4xx)
    local res
    res="$(KEYS_FILE="$2" MODE="$3" PATH_="$4" wrk -t1 -c32 -d"$1"s -s "$repo/bench/pgo-load.lua" "$5")"
    # A profile of the wrong answers would optimize the wrong paths.
    grep -q ' requests in ' <<<"$res" || die "no load on $5$4: $res"
    case "$6" in
        2xx) ! grep -q 'Non-2xx' <<<"$res" || die "unexpected errors from $5$4: $res" ;;
        4xx) grep -q 'Non-2xx' <<<"$res" || die "expected refusals from $5$4: $res" ;;
    esac
}
admin() { # method, path, [body]: one admin call with the root key
    curl -s -o /dev/null -X "$1" "http://127.0.0.1:$port$2" -H @"$work/auth.header" \
        -H 'content-type: application/json' ${3:+-d "$3"}
}

log "3/4 training load"
AUTH="$(cat "$data-rules/root_key.txt")"
start "http://127.0.0.1:$port/healthz" "$kw" serve --listen "127.0.0.1:$port" --data-dir "$data-rules" --workers 1
load 4 "$data-rules/load_requests.txt" json /v1/keys/verify "http://127.0.0.1:$port" 2xx
stop_all

AUTH="$(cat "$data/root_key.txt")"
(umask 077 && printf 'Authorization: Bearer %s\n' "$AUTH" >"$work/auth.header")
start "http://127.0.0.1:$port/healthz" "$kw" serve --listen "127.0.0.1:$port" --data-dir "$data" --workers 1
load 16 "$data/load_keys.txt" json /v1/keys/verify "http://127.0.0.1:$port" 2xx
load 2 "$data/unknown_keys.txt" json /v1/keys/verify "http://127.0.0.1:$port" 2xx
for _ in $(seq 20); do
    admin POST /v1/keys "{\"api_id\":\"$api_id\",\"name\":\"pgo\"}"
    admin GET "/v1/keys?api_id=$api_id&limit=20"
    admin GET /v1/apis
done
start "http://127.0.0.1:$gw_port/healthz" "$kw" gateway --config "$data/gateway.toml" --data-dir "$data" --workers 1
load 4 "$data/load_keys.txt" header /healthz "http://127.0.0.1:$gw_port" 2xx
load 2 "$data/unknown_keys.txt" header /healthz "http://127.0.0.1:$gw_port" 4xx
stop_all

log "4/4 optimized build with the profile (target dir $work/use)"
rm -f -- "$work"/keyward-*.profdata
"$profdata" merge -o "$work/merged.profdata" "$profiles"
# Named by its content: cargo's fingerprint sees RUSTFLAGS, not the file, so a new profile
# under the old name would leave crates built with the old one.
profile="$work/keyward-$(sha256sum "$work/merged.profdata" | cut -c1-16).profdata"
mv -- "$work/merged.profdata" "$profile"
(cd "$repo" && RUSTFLAGS="-Cprofile-use=$profile" CARGO_TARGET_DIR="$work/use" \
    cargo build --release --locked -p keyward --bin keyward)
mkdir -p -- "$(dirname "$out")"
cp -- "$work/use/release/keyward" "$out"
log "done: $out"
