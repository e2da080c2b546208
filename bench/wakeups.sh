#!/bin/bash
# usage: bench/wakeups.sh ROUNDS KW_BIN [KW_BIN_B ...]
#
# How often the load generator and the server fall asleep, per request: per round,
# hello-post and then each keyward binary serve the keyward-verify load (keys.lua, 1000 keys
# of the seed in rotation, the root key as bearer token) pinned to CPU 1 under wrk on CPU 0,
# and 4 s of it are traced (`perf record -a -e sched:sched_switch`). Prints req/s and, per
# request, the switches of wrk to idle (each one a wake-up the server pays for with its next
# response: an inter-processor interrupt, a VM exit on a guest), of the server to idle, and
# of the server to another task (its store threads, mostly; anything else on its CPU too).
#
# Needs the harness's build and seed (see README.md): HELLO (default
# $BENCH_WORK/target/release/hello, BENCH_WORK=/root/kw-bench) and SEED (default
# /dev/shm/kw-bench-seed); each keyward run starts on a fresh copy of the seed.
set -u
rounds=${1:?rounds}; shift
[ $# -ge 1 ] || { echo "usage: $0 ROUNDS KW_BIN [KW_BIN_B ...]" >&2; exit 2; }
BENCH_WORK="${BENCH_WORK:-/root/kw-bench}"
HELLO="${HELLO:-$BENCH_WORK/target/release/hello}"
SEED="${SEED:-/dev/shm/kw-bench-seed}"
PORT="${PORT:-18160}"
OUT="${OUT:-/tmp/wakeups}"
COPY=/dev/shm/kw-wakeups-seed
mkdir -p "$OUT"

trace() { # name, load path, command...
    local name=$1 path=$2; shift 2
    taskset -c 1 "$@" >/dev/null 2>&1 &
    local pid=$!
    for _ in $(seq 50); do curl -s -o /dev/null "http://127.0.0.1:$PORT/" && break; sleep 0.1; done
    LOAD_PATH=$path LOAD_MODE=json KEYS_FILE="$COPY/load_keys.txt" \
        LOAD_AUTH="$(cat "$COPY/root_key.txt")" taskset -c 0 wrk -t1 -c32 -d10s \
        -s /work/shared/bench/load/keys.lua "http://127.0.0.1:$PORT/" >"$OUT/$name.wrk" 2>&1 &
    local w=$!
    sleep 3
    local comm
    comm=$(cat "/proc/$pid/comm")
    perf record -q -a -e sched:sched_switch -o "$OUT/$name.data" -- sleep 4 >/dev/null 2>&1
    wait $w
    kill "$pid"; wait "$pid" 2>/dev/null
    perf script -i "$OUT/$name.data" -F comm,trace 2>/dev/null | python3 -c '
import re, sys
name, server, wrk_out = sys.argv[1], sys.argv[2][:15], sys.argv[3]
rps = float(re.search(r"Requests/sec:\s+([0-9.]+)", open(wrk_out).read()).group(1))
n = rps * 4
wrk_idle = server_idle = server_other = 0
for line in sys.stdin:
    prev = re.search(r"prev_comm=(\S+)", line)
    nxt = re.search(r"next_comm=(\S+)", line)
    if not prev or not nxt:
        continue
    prev, nxt = prev.group(1), nxt.group(1)
    if prev == "wrk" and nxt.startswith("swapper"):
        wrk_idle += 1
    elif prev == server and nxt.startswith("swapper"):
        server_idle += 1
    elif prev == server and nxt != server and not nxt.startswith(("swapper", "ksoftirqd", "kworker")):
        server_other += 1
print("%-12s req/s %7.0f  per request: wrk to idle %.4f  server to idle %.4f  server to another task %.4f"
      % (name, rps, wrk_idle / n, server_idle / n, server_other / n))
' "$name" "$comm" "$OUT/$name.wrk"
}

for r in $(seq "$rounds"); do
    echo "round $r"
    rm -rf "$COPY" && cp -r "$SEED" "$COPY"
    trace hello-post /v1/verify env KW_THREADS=1 "$HELLO" "127.0.0.1:$PORT"
    i=0
    for bin in "$@"; do
        i=$((i + 1))
        rm -rf "$COPY" && cp -r "$SEED" "$COPY"
        trace "keyward-$i" /v1/keys/verify env -u KEYWARD_DATABASE_URL -u KEYWARD_DATABASE_URL_FILE \
            -u KEYWARD_PEPPER_FILE "$bin" serve --listen "127.0.0.1:$PORT" --data-dir "$COPY" --workers 1
    done
done
