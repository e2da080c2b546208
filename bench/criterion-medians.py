#!/usr/bin/env python3
"""Prints the median of every criterion benchmark under a target dir's criterion/ folder.

Usage: bench/criterion-medians.py [CARGO_TARGET_DIR]   (default: $CARGO_TARGET_DIR or ./target)
Criterion's console line shows a mean-based estimate; the issue asks for medians, which are in
<target>/criterion/<group>/<bench>/new/estimates.json.
"""
import json
import os
import sys
from pathlib import Path

target = Path(sys.argv[1] if len(sys.argv) > 1 else os.environ.get("CARGO_TARGET_DIR", "target"))
root = target / "criterion"
rows = []
for est in sorted(root.glob("**/new/estimates.json")):
    bench = est.parent.parent.relative_to(root).as_posix()
    data = json.loads(est.read_text())
    med = data["median"]
    ci = med["confidence_interval"]
    rows.append((bench, med["point_estimate"], ci["lower_bound"], ci["upper_bound"]))


def fmt(ns):
    if ns >= 1e6:
        return f"{ns / 1e6:.2f} ms"
    if ns >= 1e3:
        return f"{ns / 1e3:.2f} µs"
    return f"{ns:.1f} ns"


print("| benchmark | median | 95% CI |")
print("|---|---:|---:|")
for bench, m, lo, hi in rows:
    print(f"| {bench} | {fmt(m)} | {fmt(lo)} – {fmt(hi)} |")
