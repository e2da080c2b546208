#!/bin/bash
# usage: bench/perf-verify.sh ROUNDS KW_BIN [KW_BIN_B ...]
#
# Where a keyward binary's CPU goes per HTTP verify, by `perf record` (cpu-clock; this VM has
# no hardware counters): per round, each binary in turn serves the harness's keyward-verify
# load (keys.lua, 1000 keys of the seed in rotation) pinned to CPU 1 under wrk on CPU 0; 8 s
# of it are sampled at 4 kHz. Each run starts on a fresh copy of the seed (SEED, default
# /dev/shm/kw-bench-seed, made by the harness), so no run writes into a larger database
# than another. Prints req/s and, per request, user and kernel time and the user time of
# the functions that read a key's data (the cache lookup, the checks, the JSON's copy) and
# of the access-log writer. KEYS_FILE overrides the load's keys (e.g. 10 keys repeated, to
# see what cache misses on the keys' data cost). perf's overhead lowers req/s by ~25 %:
# compare binaries within one run, not with the harness.
set -u
rounds=${1:?rounds}; shift
[ $# -ge 1 ] || { echo "usage: $0 ROUNDS KW_BIN [KW_BIN_B ...]" >&2; exit 2; }
SEED="${SEED:-/dev/shm/kw-bench-seed}"
PORT="${PORT:-18150}"
OUT="${OUT:-/tmp/perf-verify}"
COPY=/dev/shm/kw-perf-verify-seed
mkdir -p "$OUT"

profile() { # bin, data file
    rm -rf "$COPY" && cp -r "$SEED" "$COPY"
    taskset -c 1 env -u KEYWARD_DATABASE_URL -u KEYWARD_DATABASE_URL_FILE -u KEYWARD_PEPPER_FILE \
        "$1" serve --listen "127.0.0.1:$PORT" --data-dir "$COPY" --workers 1 >/dev/null 2>&1 &
    local pid=$!
    for _ in $(seq 50); do curl -s -o /dev/null "http://127.0.0.1:$PORT/" && break; sleep 0.1; done
    LOAD_PATH=/v1/keys/verify LOAD_MODE=json KEYS_FILE="${KEYS_FILE:-$COPY/load_keys.txt}" \
        LOAD_AUTH="$(cat "$COPY/root_key.txt")" taskset -c 0 wrk -t1 -c32 -d14s \
        -s /work/shared/bench/load/keys.lua "http://127.0.0.1:$PORT/" >"$2.wrk" 2>&1 &
    local w=$!
    sleep 3
    taskset -c 0 perf record -q -e cpu-clock -F 4000 -p "$pid" -o "$2" -- sleep 8 >/dev/null 2>&1
    wait $w
    kill "$pid"; wait "$pid" 2>/dev/null
    awk '/Requests\/sec/ {print $2}' "$2.wrk" >"$2.rps"
}

report() { # data file, label
    perf report -i "$1" --no-children --sort dso,symbol --stdio -q -F period,dso,sym 2>/dev/null |
        python3 -c '
import re, sys
rps = float(open(sys.argv[1] + ".rps").read() or 0)
groups = [("lookup", r"KeyCache::get"),
          ("checks", r"verify_parsed|Service::decide|apply_rules|verify::evaluate"),
          ("to_json", r"VerifyResponse::to_json"), ("memmove", r"memmove|memcpy"),
          ("writer", r"keyward_server::records|access_log::|Anchors|Pending")]
sums = dict.fromkeys([g for g, _ in groups] + ["user", "kernel"], 0)
for line in sys.stdin:
    parts = line.split(None, 2)
    if len(parts) < 3 or not parts[0].isdigit():
        continue
    period, dso, sym = int(parts[0]), parts[1], parts[2]
    if "kernel" in dso:
        sums["kernel"] += period
        continue
    sums["user"] += period
    for g, rx in groups:
        if re.search(rx, sym):
            sums[g] += period
            break
n = rps * 8 or 1
print("%-10s req/s %7.0f  ns/req: " % (sys.argv[2], rps)
      + "  ".join("%s %5.0f" % (k, v / n) for k, v in sums.items()))
' "$1" "$2"
}

for r in $(seq "$rounds"); do
    i=0
    for bin in "$@"; do
        i=$((i + 1))
        profile "$bin" "$OUT/kw-$i-$r.data"
        report "$OUT/kw-$i-$r.data" "kw-$i r$r"
    done
done
