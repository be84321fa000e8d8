#!/usr/bin/env python3
"""Runs two training commands and compares every loss they log.

usage: compare_runs.py OUTDIR RTOL CMD_A... --then CMD_B...

Each command gets `--metrics OUTDIR.{a,b}.jsonl` appended. Passes when both exit 0, log the same
number of train_loss and val_loss values (at least 3), and every pair agrees within relative
RTOL (RTOL 0 demands bitwise equality: the metrics hold 17 significant digits, which round-trip).
Used for the project's contracts: determinism (A = B), expert-parallel equivalence (P ranks vs
one rank with P micro-batches) and overlap equivalence (chunked vs serial exchanges).
"""
import json
import subprocess
import sys


def losses(path, key):
    with open(path) as f:
        return [json.loads(line)[key] for line in f if f'"{key}"' in line]


def run(cmd, metrics, log):
    with open(log, "w") as out:
        try:
            rc = subprocess.call(cmd + ["--metrics", metrics], stdout=out, stderr=subprocess.STDOUT, timeout=600)
        except subprocess.TimeoutExpired:
            rc = "timeout (hang?)"
    if rc != 0:
        print(f"FAIL: {rc}: {' '.join(cmd)}")
        print(open(log).read())
        sys.exit(1)


def main():
    out, rtol = sys.argv[1], float(sys.argv[2])
    split = sys.argv.index("--then")
    cmd_a, cmd_b = sys.argv[3:split], sys.argv[split + 1:]
    run(cmd_a, f"{out}.a.jsonl", f"{out}.a.log")
    run(cmd_b, f"{out}.b.jsonl", f"{out}.b.log")
    worst, count = 0.0, 0
    for key in ("train_loss", "val_loss"):
        a, b = losses(f"{out}.a.jsonl", key), losses(f"{out}.b.jsonl", key)
        if len(a) != len(b) or not a:
            print(f"FAIL: {key}: {len(a)} values from A, {len(b)} from B")
            sys.exit(1)
        for i, (x, y) in enumerate(zip(a, b)):
            rel = abs(x - y) / abs(y) if y else abs(x)
            worst = max(worst, rel)
            count += 1
            if rel > rtol:
                print(f"FAIL: {key} #{i}: {x!r} (A) vs {y!r} (B), relative difference {rel:.3g} > {rtol}")
                sys.exit(1)
    if count < 3:
        print(f"FAIL: only {count} losses logged")
        sys.exit(1)
    print(f"PASS: {count} losses, worst relative difference {worst:.3g} (tolerance {rtol})")


if __name__ == "__main__":
    main()
