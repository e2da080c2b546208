#!/bin/bash
# usage: bench/gw-split.sh [ROUNDS]
#
# Where a proxied request's CPU goes, for nginx-gw and keyward-gw in turn: each gateway and
# the harness's `hello` upstream pinned to CPU 1 (`--workers 1`, nginx `worker_processes 1`),
# wrk -t1 -c32 on CPU 0 with the harness's keys.lua (1000 keys in rotation, x-api-key), 3 s
# of warm-up, then `perf record -C 1` for 5 s of a 10 s run. Prints, per request, the µs of
# CPU 1 spent in the gateway's kernel and user space and in the upstream's, and the bound that
# follows: the best throughput ratio keyward-gw could reach over nginx-gw if its own user
# space cost nothing (same syscalls, so its kernel work and the upstream's stay), and if it
# cost only its HTTP handling — a server side and a client side, each as cheap as the `hello`
# upstream's whole user space — with verification, limits and recording for free.
#
# Needs the shared harness's build, keys and seed (see README.md): BENCH_WORK (default
# /root/kw-bench; hello, keys in gen/), KW_BIN (default $BENCH_WORK/target/release/keyward),
# SEED (default /dev/shm/kw-bench-seed), and linux-perf. Uses ports 18080, 18090 and 18121.
set -u
rounds=${1:-1}
BENCH_WORK="${BENCH_WORK:-/root/kw-bench}"
HELLO="$BENCH_WORK/target/release/hello"
GEN="$BENCH_WORK/gen"
KW_BIN="${KW_BIN:-$BENCH_WORK/target/release/keyward}"
SEED="${SEED:-/dev/shm/kw-bench-seed}"
LUA=/work/shared/bench/load/keys.lua
WORK=$(mktemp -d /dev/shm/kw-gw-split.XXXXXX)
trap 'rm -rf -- "$WORK"' EXIT

# The keyward gateway's data dir: a copy of the seed with the harness's per-key limit
# (1000/s, burst 1000), as bench/targets.sh sets it for keyward-gw.
cp -a "$SEED" "$WORK/kw"
sqlite3 "$WORK/kw/keyward.db" \
    "UPDATE keys SET rate_limits = '[{\"name\":\"default\",\"limit\":1000,\"period\":\"1000ms\"}]';"
api=$(sqlite3 "$WORK/kw/keyward.db" "SELECT id FROM apis WHERE deleted_at IS NULL LIMIT 1;")
printf 'listen = "127.0.0.1:18121"\napi_id = "%s"\nkey_from = ["header:x-api-key"]\n[[route]]\npath = "/**"\nupstream = "http://127.0.0.1:18080"\n' \
    "$api" >"$WORK/kw/gateway.toml"
mkdir -p "$WORK/nginx"
sed -e "s#@WORKERS@#1#g" -e "s#@RUNDIR@#$WORK/nginx#g" -e "s#@GEN@#$GEN#g" -e "s#@PORT@#18090#g" \
    -e "s#@UPSTREAM_PORT@#18080#g" -e "s#@RATE@#1000#g" -e "s#@BURST@#1000#g" \
    /work/shared/bench/peers/nginx/nginx.conf.in >"$WORK/nginx/nginx.conf"

one() { # one nginx|keyward -> prints "rps gw_kernel gw_user up_kernel up_user" (µs per request)
    local who=$1 port keys gw
    taskset -c 1 env KW_THREADS=1 "$HELLO" 127.0.0.1:18080 >/dev/null 2>&1 &
    local hello=$!
    if [[ $who == keyward ]]; then
        taskset -c 1 env -u KEYWARD_DATABASE_URL "$KW_BIN" gateway --config "$WORK/kw/gateway.toml" \
            --data-dir "$WORK/kw" --workers 1 >/dev/null 2>&1 &
        gw=$!; port=18121; keys="$WORK/kw/load_keys.txt"
    else
        taskset -c 1 nginx -c "$WORK/nginx/nginx.conf" >/dev/null 2>&1 &
        gw=$!; port=18090; keys="$GEN/load_keys.txt"
    fi
    for _ in $(seq 50); do curl -s -o /dev/null "http://127.0.0.1:$port/" && break; sleep 0.1; done
    export KEYS_FILE=$keys LOAD_MODE=header LOAD_PATH=/
    taskset -c 0 wrk -t1 -c32 -d3s -s "$LUA" "http://127.0.0.1:$port/" >/dev/null 2>&1
    taskset -c 0 wrk -t1 -c32 -d10s -s "$LUA" "http://127.0.0.1:$port/" >"$WORK/wrk.txt" 2>&1 &
    local w=$!
    sleep 2
    perf record -q -F 4999 -C 1 -o "$WORK/perf.data" -- sleep 5 >/dev/null 2>&1
    wait $w
    kill "$gw" "$hello" 2>/dev/null; wait "$gw" "$hello" 2>/dev/null
    local rps
    rps=$(awk '/Requests\/sec/ {print $2}' "$WORK/wrk.txt")
    perf report -i "$WORK/perf.data" --no-children -F sample,comm,dso --stdio 2>/dev/null |
        awk -v rps="$rps" -v who="$who" '
            /^#/ || NF < 3 { next }
            { n = $1; comm = $2; dso = $3; total += n
              side = (comm == "hello") ? "up" : (comm == who || comm ~ /^sqlx-sqlite/ || comm ~ /^keyward/) ? "gw" : "other"
              ring = (dso == "[kernel.kallsyms]") ? "k" : "u"
              s[side ring] += n }
            END { req = rps * 5; us = 1e6 / 4999 / req   # µs of CPU per sample, per request
                  printf "%s %.2f %.2f %.2f %.2f\n", rps, s["gwk"] * us, s["gwu"] * us, s["upk"] * us, s["upu"] * us }'
}

printf '%-8s %9s %10s %8s %10s %8s %8s\n' gateway req/s gw-kernel gw-user up-kernel up-user total
for r in $(seq "$rounds"); do
    read -r n_rps n_gk n_gu n_uk n_uu < <(one nginx)
    read -r k_rps k_gk k_gu k_uk k_uu < <(one keyward)
    for row in "nginx $n_rps $n_gk $n_gu $n_uk $n_uu" "keyward $k_rps $k_gk $k_gu $k_uk $k_uu"; do
        set -- $row
        printf '%-8s %9.0f %10.2f %8.2f %10.2f %8.2f %8.2f\n' "$1" "$2" "$3" "$4" "$5" "$6" \
            "$(echo "$3 + $4 + $5 + $6" | bc -l)"
    done
    n_total=$(echo "$n_gk + $n_gu + $n_uk + $n_uu" | bc -l)
    echo "round $r: keyward-gw / nginx-gw = $(echo "$k_rps / $n_rps" | bc -l | cut -c1-5)." \
        "Bounds on that ratio: with no user space of its own" \
        "$(echo "$n_total / ($k_gk + $k_uk + $k_uu)" | bc -l | cut -c1-5)x;" \
        "with only the HTTP handling of both sides, each as cheap as the upstream's (2 x up-user)" \
        "$(echo "$n_total / ($k_gk + 2 * $k_uu + $k_uk + $k_uu)" | bc -l | cut -c1-5)x"
done
