#!/bin/bash
# usage: bench/callgrind-verify.sh BENCH_BIN CASE...   (CASE: hot, hot_with_rules, …)
#
# Instructions per in-process verify, without the HMAC, from callgrind: repeatable on a noisy
# machine where criterion's nanoseconds are not. BENCH_BIN is the criterion binary
# (`cargo bench --no-run -p keyward --bench verify` prints it). Collects inside
# `Service::verify*` only, over 20k cached keys and 3 s of criterion's profile mode, then
# prints (total − `Peppers::digest`) / calls of `Peppers::digest` (one per verify). Valgrind runs the SHA-256
# in software, so the HMAC is left out rather than compared.
set -euo pipefail
[ $# -ge 2 ] || { echo "usage: $0 BENCH_BIN CASE..." >&2; exit 2; }
bin=$1; shift
out=$(mktemp -d)
for case in "$@"; do
  f=$out/$case.cg
  KW_BENCH_PG=off KW_BENCH_KEYS=20000 valgrind --tool=callgrind --callgrind-out-file="$f" \
    --toggle-collect='keyward_core::service::Service::verify*' \
    "$bin" --bench "verify_1m_cached/$case\$" --profile-time 3 > /dev/null 2>&1
  digest=$(callgrind_annotate --inclusive=yes "$f" 2>/dev/null | grep -m1 'Peppers::digest' \
    | awk '{gsub(",", "", $1); print $1}')
  python3 - "$f" "${digest:-0}" "$case" <<'PY'
import re, sys
path, digest, case = sys.argv[1], int(sys.argv[2]), sys.argv[3]
names, calls, total = {}, 0, 0
lines = open(path).read().split("\n")
for i, line in enumerate(lines):
    m = re.match(r"c?fn=\((\d+)\)(?: (.*))?", line)
    if m and m.group(2):
        names[m.group(1)] = m.group(2)
    if line.startswith("cfn="):
        target = re.match(r"cfn=\((\d+)\)", line).group(1)
        nxt = lines[i + 1] if i + 1 < len(lines) else ""
        if names.get(target, "").endswith("keyward_core::digest::Peppers::digest") and nxt.startswith("calls="):
            calls += int(nxt.split("=")[1].split()[0])
    if line.startswith(("totals:", "summary:")):
        total = int(line.split()[1])
print(f"{case}: {calls} verifies, {round(total / max(calls, 1))} instructions each, "
      f"{round((total - digest) / max(calls, 1))} without the HMAC")
PY
done
rm -rf "$out"
