#!/bin/bash
# usage: bench/callgrind-http.sh KW_BIN [KW_BIN_B]
#
# Instructions per HTTP verify on the server side, beside the bare hyper baseline: each server
# runs under callgrind (`--workers 1`), takes 15 s of wrk load (4 connections, the harness's
# keys.lua, the same requests as hello-post / keyward-verify) to warm up, then its counters are
# zeroed and it takes 15 s more; the instructions of every thread over those 15 s, divided by
# the requests wrk counted, are the figure. Unlike req/s or CPU time, it does not move with
# the noise of these VMs.
#
# Printed per server, in instructions per request: all of them; those in SHA-256 compressions
# (valgrind has no SHA extensions, so the digests run in software here, ~3,500 instructions a
# block, where the native build uses SHA-NI); the connection tasks without them (parsing,
# answering and all a request does on the way: the figure to compare with hello-post's); the
# store threads (the access log and usage counts written to SQLite); and the rest (the access
# log's encoder task, the runtime's idle loop). The last two are paid per flush rather than per
# request, so they shrink as the rate rises, and the rate under valgrind is ~50x lower than
# natively.
#
# Needs the harness's build and seed (see README.md): HELLO (default
# $BENCH_WORK/target/release/hello, BENCH_WORK=/root/kw-bench) and SEED (default
# /dev/shm/kw-bench-seed). About 1.5 min per server. For keyward-verify-rules, point it at the
# harness's rules copy: SEED=/dev/shm/kw-bench-rules KEYS_FILE=/dev/shm/kw-bench-rules/load_requests.txt
set -u
[ $# -ge 1 ] || { echo "usage: $0 KW_BIN [KW_BIN_B]" >&2; exit 2; }
BENCH_WORK="${BENCH_WORK:-/root/kw-bench}"
HELLO="${HELLO:-$BENCH_WORK/target/release/hello}"
SEED="${SEED:-/dev/shm/kw-bench-seed}"
PORT="${PORT:-18150}"
LUA=/work/shared/bench/load/keys.lua
OUT=$(mktemp -d /tmp/callgrind-http.XXXXXX)

# keyward on the seed's embedded store, whatever this shell points it at.
unset KEYWARD_DATABASE_URL KEYWARD_DATABASE_URL_FILE KEYWARD_PEPPER_FILE
export KEYS_FILE="${KEYS_FILE:-$SEED/load_keys.txt}" LOAD_MODE=json
# Security: the root key goes to wrk through the environment, never on a command line.
LOAD_AUTH="$(cat "$SEED/root_key.txt")" || exit 1
export LOAD_AUTH

measure() { # name, path, command...
    local name=$1 path=$2; shift 2
    local dir="$OUT/$name"
    mkdir -p "$dir"
    # No `env` wrapper: valgrind would follow the exec uninstrumented.
    valgrind --tool=callgrind --callgrind-out-file="$dir/cg.out" "$@" >"$dir/server.log" 2>&1 &
    local vg=$!
    for _ in $(seq 600); do curl -s -o /dev/null "http://127.0.0.1:$PORT/" && break; sleep 0.2; done
    LOAD_PATH=$path wrk -t1 -c4 -d15s -s "$LUA" "http://127.0.0.1:$PORT" >"$dir/warm.txt" 2>&1
    callgrind_control -z "$vg" >/dev/null 2>&1
    LOAD_PATH=$path wrk -t1 -c4 -d15s -s "$LUA" "http://127.0.0.1:$PORT" >"$dir/wrk.txt" 2>&1
    callgrind_control -d "$vg" >/dev/null 2>&1
    sleep 1
    kill -9 "$vg" 2>/dev/null; wait "$vg" 2>/dev/null
    local n dump
    n=$(grep -oE '^ *[0-9]+ requests in' "$dir/wrk.txt" | grep -oE '[0-9]+')
    dump=$(ls "$dir"/cg.out.* 2>/dev/null | head -1)
    if [ -z "$n" ] || [ -z "$dump" ]; then
        echo "$name: no measurement (see $dir)"; return
    fi
    if grep -q "Non-2xx" "$dir/wrk.txt"; then echo "$name: WARNING: non-2xx answers (see $dir/wrk.txt)"; fi
    callgrind_annotate --inclusive=yes --threshold=100 "$dump" >"$dir/inclusive.txt" 2>/dev/null
    local total sha writer conn
    field() { awk -v pat="$1" '$0 ~ pat {gsub(",", "", $1); print $1; exit}' "$dir/inclusive.txt"; }
    total=$(field 'PROGRAM TOTALS')
    sha=$(field 'sha2::sha256::compress256 ')
    # The connection tasks: parsing, answering and everything a request does on the way.
    conn=$(field '(keyward_server::serve::serve|hello::serve)::[{][{]closure[}][}]::[{][{]closure[}][}] ')
    # keyward's store threads (the access log and usage counts reach SQLite there).
    writer=$(field 'sqlx_sqlite::connection::worker::ConnectionWorker::establish::[{][{]closure[}][}]::[{][{]closure[}][}] ')
    awk -v name="$name" -v n="$n" -v t="$total" -v s="${sha:-0}" -v c="${conn:-0}" -v w="${writer:-0}" 'BEGIN {
        printf "%-12s %6d req  all %6.0f  sha256 %6.0f  connection tasks without sha256 %6.0f  store threads %6.0f  other %6.0f\n",
            name, n, t / n, s / n, (c - s) / n, w / n, (t - c - w) / n }'
}

echo "callgrind over HTTP, 4 connections, 15 s measured after 15 s of warm-up (files in $OUT)"
measure hello-post /v1/verify "$HELLO" "127.0.0.1:$PORT"
i=0
for kw in "$@"; do
    i=$((i + 1))
    measure "keyward-$i" /v1/keys/verify "$kw" serve --listen "127.0.0.1:$PORT" --data-dir "$SEED" --workers 1
done
