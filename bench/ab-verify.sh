#!/bin/bash
# usage: bench/ab-verify.sh ROUNDS KW_BIN [KW_BIN_B]
#
# HTTP verify A/B on a noisy machine: per round, the bare hyper baseline (hello-post) and each
# keyward binary in turn, back to back, so that all of them see the same minutes. Each runs
# pinned to CPU 1 (`--workers 1`) under wrk on CPU 0 for 12 s (the first 3 s are warm-up);
# prints req/s and the server's user, system and total CPU time per request over 6 s of it,
# read from /proc/PID/stat, and wrk's p50 and p99 latency over the whole 12 s.
#
# Needs the shared harness's build and seed (see README.md): HELLO (default
# $BENCH_WORK/target/release/hello, BENCH_WORK=/root/kw-bench) and SEED (default
# /dev/shm/kw-bench-seed, made by bench_seed). SEED_2, if set, is the second binary's data dir
# (its own seed, made by its own bench_seed), for binaries whose schemas differ: a binary
# refuses a database migrated by a newer one.
#
# Each round also runs the harness's `verify` baseline (VERIFY, default
# $BENCH_WORK/target/release/verify, with the harness's settings), a bare implementation of the
# same request (JSON body, SHA-256, a 1M-key map, a token bucket, a JSON verdict) without what
# keyward adds (root-key authentication, request ids, the access log); VERIFY=none skips it. At
# the end, the median per-round ratios of each keyward binary to hello-post and to that floor.
#
# AB=gw-reject compares the binaries' gateway reject path instead (unknown keys -> 401, as
# the keyward-gw-reject target), on the harness's gateway copy (GW_DIR, default
# /dev/shm/kw-bench-gw, whose gateway.toml fixes the port), without a baseline.
set -u
rounds=${1:?rounds}; shift
[ $# -ge 1 ] || { echo "usage: $0 ROUNDS KW_BIN [KW_BIN_B]" >&2; exit 2; }
BENCH_WORK="${BENCH_WORK:-/root/kw-bench}"
HELLO="${HELLO:-$BENCH_WORK/target/release/hello}"
SEED="${SEED:-/dev/shm/kw-bench-seed}"
PORT="${PORT:-18140}"
LUA=/work/shared/bench/load/keys.lua
VERIFY="${VERIFY:-$BENCH_WORK/target/release/verify}"
RESULTS=$(mktemp)
trap 'rm -f "$RESULTS"' EXIT

run() { # name, command...
    local name=$1; shift
    taskset -c 1 "$@" >/dev/null 2>&1 &
    local pid=$!
    for _ in $(seq 50); do curl -s -o /dev/null "http://127.0.0.1:$PORT/" && break; sleep 0.1; done
    taskset -c 0 wrk -t1 -c32 -d12s --latency -s "$LUA" "http://127.0.0.1:$PORT$LOAD_PATH" >/tmp/ab-verify.wrk 2>&1 &
    local w=$!
    sleep 3
    read -r u0 s0 < <(awk '{print $14, $15}' "/proc/$pid/stat")
    sleep 6
    read -r u1 s1 < <(awk '{print $14, $15}' "/proc/$pid/stat")
    wait $w
    kill "$pid"; wait "$pid" 2>/dev/null
    local rps p50 p99
    rps=$(awk '/Requests\/sec/ {print $2}' /tmp/ab-verify.wrk)
    p50=$(awk '$1 == "50%" {print $2}' /tmp/ab-verify.wrk)
    p99=$(awk '$1 == "99%" {print $2}' /tmp/ab-verify.wrk)
    echo "$round $name $rps" >>"$RESULTS"
    python3 -c "
rps = float('$rps'); n = rps * 6; tick = 1e6 / 100   # clock ticks of 10 ms
print('%-12s req/s %8.0f  user %5.2f us  sys %5.2f us  total %5.2f us  p50 %8s  p99 %8s' % (
    '$name', rps, ($u1 - $u0) * tick / n, ($s1 - $s0) * tick / n, ($u1 - $u0 + $s1 - $s0) * tick / n,
    '$p50', '$p99'))"
}

if [[ "${AB:-verify}" == gw-reject ]]; then
    GW_DIR="${GW_DIR:-/dev/shm/kw-bench-gw}"
    PORT=$(sed -n 's/^listen = "127.0.0.1:\([0-9]*\)"/\1/p' "$GW_DIR/gateway.toml")
    export KEYS_FILE="$GW_DIR/unknown_keys.txt" LOAD_MODE=header
    for round in $(seq "$rounds"); do
        echo "round $round"
        i=0
        for bin in "$@"; do
            i=$((i + 1))
            LOAD_PATH=/ run "gw-reject-$i" env -u KEYWARD_DATABASE_URL -u KEYWARD_DATABASE_URL_FILE \
                -u KEYWARD_PEPPER_FILE "$bin" gateway --config "$GW_DIR/gateway.toml" --data-dir "$GW_DIR" --workers 1
        done
    done
    exit 0
fi

export KEYS_FILE LOAD_MODE=json LOAD_AUTH
seeds=("$SEED" "${SEED_2:-$SEED}")
for round in $(seq "$rounds"); do
    echo "round $round"
    KEYS_FILE="$SEED/load_keys.txt" LOAD_AUTH="$(cat "$SEED/root_key.txt")"
    LOAD_PATH=/v1/verify run hello-post "$HELLO" "127.0.0.1:$PORT"
    if [[ "$VERIFY" != none ]]; then
        LOAD_PATH=/v1/verify run verify-floor env KW_THREADS=1 KW_KEYS=1000000 KW_RATE=1000 \
            KW_BURST=1000 "$VERIFY" "127.0.0.1:$PORT"
    fi
    i=0
    for bin in "$@"; do
        seed=${seeds[$i]:-$SEED}
        i=$((i + 1))
        KEYS_FILE="$seed/load_keys.txt" LOAD_AUTH="$(cat "$seed/root_key.txt")"
        LOAD_PATH=/v1/keys/verify run "keyward-$i" env -u KEYWARD_DATABASE_URL -u KEYWARD_DATABASE_URL_FILE \
            -u KEYWARD_PEPPER_FILE "$bin" serve --listen "127.0.0.1:$PORT" --data-dir "$seed" --workers 1
    done
done
python3 - "$RESULTS" <<'PY'
import collections, statistics, sys
rps = collections.defaultdict(dict)
for line in open(sys.argv[1]):
    fields = line.split()
    if len(fields) == 3:  # a run wrk printed no rate for is left out
        rps[fields[0]][fields[1]] = float(fields[2])
names = sorted({n for by in rps.values() for n in by if n.startswith("keyward-")})
for base in ("hello-post", "verify-floor"):
    for name in names:
        ratios = [by[name] / by[base] for by in rps.values() if name in by and by.get(base)]
        if ratios:
            print("%-10s / %-12s median %.3f  per round %s" % (
                name, base, statistics.median(ratios), " ".join("%.2f" % x for x in ratios)))
PY
