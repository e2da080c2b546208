#!/bin/bash
# usage: bench/records-on-off.sh on|off ROUND  -- runs keyward serve pinned to CPU 1 with recording on/off, wrk pinned to CPU 0
set -u
KW_BIN="${KW_BIN:-target/release/keyward}"
# Seed once: target/release/examples/bench_seed --data-dir /dev/shm/kw-rec-seed --keys 100000
SEED="${SEED:-/dev/shm/kw-rec-seed}"
mode=$1; round=$2
rm -rf /dev/shm/kw-rec-run && cp -a "$SEED" /dev/shm/kw-rec-run
rec=true; [[ $mode == off ]] && rec=false
KEYWARD_RECORD_VERIFICATIONS=$rec KEYWARD_LOG=warn taskset -c 1 "$KW_BIN" serve --listen 127.0.0.1:18130 --data-dir /dev/shm/kw-rec-run --workers 1 2>/dev/null &
pid=$!
for i in $(seq 50); do curl -s -o /dev/null http://127.0.0.1:18130/healthz && break; sleep 0.1; done
export KEYS_FILE=/dev/shm/kw-rec-run/load_keys.txt LOAD_MODE=json LOAD_PATH=/v1/keys/verify LOAD_AUTH="$(cat /dev/shm/kw-rec-run/root_key.txt)"
taskset -c 0 wrk -t1 -c32 -d3s -s /work/shared/bench/load/keys.lua http://127.0.0.1:18130 >/dev/null 2>&1   # warm the cache
cpu0=$(awk '{print $14+$15}' /proc/$pid/stat)
out=$(taskset -c 0 wrk -t1 -c32 -d10s --latency -s /work/shared/bench/load/keys.lua http://127.0.0.1:18130 2>&1)
cpu1=$(awk '{print $14+$15}' /proc/$pid/stat)
rps=$(echo "$out" | awk '/Requests\/sec/ {print $2}')
p99=$(echo "$out" | awk '/ 99%/ {print $2}')
reqs=$(echo "$out" | awk '/requests in/ {print $1}')
sleep 1.5
metrics=$(curl -s http://127.0.0.1:18130/metrics | grep -E "^keyward_access_log_(written|dropped)_total|^keyward_verifications_total\{code=\"VALID\"\}" | tr '\n' ' ')
kill -TERM $pid; wait $pid
us=$(python3 -c "print(round(($cpu1-$cpu0)*10000/$reqs,1))")
echo "record=$mode round=$round req/s=$rps p99=$p99 srv_us/req=$us $metrics"
