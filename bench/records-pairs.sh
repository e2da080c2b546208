#!/bin/bash
# usage: bench/records-pairs.sh N -- N interleaved off/on pairs of bench/records-on-off.sh;
# prints each pair and the median on/off ratios of req/s and of server µs per request.
# Needs SEED and KW_BIN like records-on-off.sh.
set -u
n=${1:-6}
here=$(dirname "$0")
out=$(mktemp)
for r in $(seq "$n"); do
  for m in off on; do bash "$here/records-on-off.sh" "$m" "$r" | tee -a "$out"; done
done
python3 - "$out" <<'PY'
import re, statistics, sys
rows = [dict(re.findall(r'(\S+?)=(\S+)', l)) for l in open(sys.argv[1])]
off = [r for r in rows if r['record'] == 'off']; on = [r for r in rows if r['record'] == 'on']
rps = [float(b['req/s']) / float(a['req/s']) for a, b in zip(off, on)]
us = [float(a['srv_us/req']) / float(b['srv_us/req']) for a, b in zip(off, on)]
print(f"pairs={len(rps)} req/s on/off: median {statistics.median(rps):.3f} (min {min(rps):.3f}, max {max(rps):.3f}); "
      f"by srv µs/req off/on: median {statistics.median(us):.3f}")
PY
rm -f "$out"
