"""Markdown tables for RESULTS.md from a pytest-benchmark JSON file.

Usage::

    python -m pytest benchmarks --benchmark-only --benchmark-json bench.json
    python benchmarks/report.py bench.json > tables.md

One table per suite (file); a row per benchmark with min and median times and
the interesting ``extra_info`` (iterations, ratios to the FFT floor).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import defaultdict

EXTRA_KEYS = ("grid", "iterations", "converged", "time_per_iteration_s", "fft_pairs_floor_s",
              "ratio_to_floor", "kernel_rel_err")


def _ms(v):
    return f"{v * 1e3:.3g}"


def _extra(info):
    parts = []
    for k in EXTRA_KEYS:
        if k in info:
            v = info[k]
            if isinstance(v, float):
                v = _ms(v) + " ms" if k.endswith("_s") else f"{v:.3g}"
            parts.append(f"{k}={v}")
    return ", ".join(parts)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("json_file")
    args = p.parse_args(argv)
    with open(args.json_file) as f:
        doc = json.load(f)
    mi = doc.get("machine_info", {})
    ci = doc.get("commit_info", {})
    dirty = " (dirty)" if ci.get("dirty") else ""
    print(f"Machine: {mi.get('cpu', {}).get('brand_raw', mi.get('processor', '?'))}, "
          f"{mi.get('cpu', {}).get('count', '?')} CPUs, Python {mi.get('python_version', '?')}; "
          f"date {doc.get('datetime', '?')}; commit {ci.get('id', '?')[:12]}{dirty}")
    by_file = defaultdict(list)
    for b in doc["benchmarks"]:
        by_file[b["fullname"].split("::")[0]].append(b)
    for fname, benches in by_file.items():
        print(f"\n### {fname}\n")
        print("| group | benchmark | min (ms) | median (ms) | rounds | notes |")
        print("|---|---|---|---|---|---|")
        for b in sorted(benches, key=lambda b: (b.get("group") or "", b["name"])):
            st = b["stats"]
            print(f"| {b.get('group') or ''} | {b['name']} | {_ms(st['min'])} | {_ms(st['median'])} | "
                  f"{st['rounds']} | {_extra(b.get('extra_info', {}))} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
