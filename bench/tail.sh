#!/bin/bash
# usage: bench/tail.sh BIN SEED [LABEL]
#
# One binary's latency tail on a warm cache: BIN (keyward, or the harness's `hello` baseline,
# recognised by its name) pinned to CPU 1 on SEED (a bench_seed data dir), 3 s of warm-up, then
# 10 s of `wrk -t1 -c32 --latency` with the harness's keys.lua on CPU 0 against
# POST /v1/keys/verify; prints req/s, p50, p90, p99, p99.9 and max. The warm-up keeps the
# first second's cache misses out of the tail (ab-verify.sh's p99 includes them).
# To run keyward with other settings, pass a wrapper script as BIN, e.g. one that sets
# KEYWARD_RECORD_VERIFICATIONS=false.
set -u
BIN=${1:?binary}; SEED=${2:?seed dir}; L=${3:-$1}
PORT="${PORT:-18140}"
export LOAD_PATH=/v1/keys/verify KEYS_FILE=$SEED/load_keys.txt LOAD_MODE=json
LOAD_AUTH="$(cat "$SEED/root_key.txt")"; export LOAD_AUTH
if [[ $(basename "$BIN") == hello* ]]; then
    taskset -c 1 "$BIN" "127.0.0.1:$PORT" >/dev/null 2>&1 &
else
    taskset -c 1 env -u KEYWARD_DATABASE_URL -u KEYWARD_DATABASE_URL_FILE -u KEYWARD_PEPPER_FILE \
        "$BIN" serve --listen "127.0.0.1:$PORT" --data-dir "$SEED" --workers 1 >/dev/null 2>&1 &
fi
PID=$!
for _ in $(seq 50); do curl -s -o /dev/null "http://127.0.0.1:$PORT/" && break; sleep 0.1; done
LUA=/work/shared/bench/load/keys.lua
taskset -c 0 wrk -t1 -c32 -d3s -s "$LUA" "http://127.0.0.1:$PORT$LOAD_PATH" >/dev/null 2>&1
taskset -c 0 wrk -t1 -c32 -d10s --latency -s "$LUA" "http://127.0.0.1:$PORT$LOAD_PATH" >/tmp/tail.wrk 2>&1
kill "$PID"; wait "$PID" 2>/dev/null
python3 -c "
import json
for l in open('/tmp/tail.wrk'):
    if l.startswith('WRKJSON'):
        d = json.loads(l[8:])
        print('%-16s req/s %7.0f  p50 %5d  p90 %5d  p99 %6d  p99.9 %6d  max %6d us' % (
            '$L', d['rps'], d['p50_us'], d['p90_us'], d['p99_us'], d['p999_us'], d['max_us']))"
