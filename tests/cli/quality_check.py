#!/usr/bin/env python3
"""The structure of a bench/quality study's output, and its statistics recomputed from the per-seed
values with independent formulas (the statistics module of the standard library for mean and sd; the
closed-form Student t critical values for 1 and 2 degrees of freedom).

usage: quality_check.py OUTDIR SEEDS

Checks that
- quality.csv has one row per model × budget × seed, the seeds SEEDS in number, every model on the
  same seeds, and a finite val_loss and val_bpb in each; the runs of one model and budget differ
  between seeds (a seed changes the run);
- the upcycled row, where present, spent the dense run's FLOPs plus its own, within 10% of dense's;
- summary.csv's mean and sd per (model, budget) are those of the per-seed values;
- paired.csv holds uoe against every other model (and upcycled against dense) at every budget, and its
  mean, sd, t and interval are those of the per-seed differences; a claim is made exactly where the
  interval excludes 0, and names the model with the lower loss;
- table.md shows every cell with n = SEEDS and every comparison, and is labelled with commit, CPU,
  command and wall time.
"""
import csv
import math
import os
import statistics
import sys

T_CLOSED = {1: math.tan(0.475 * math.pi), 2: 0.95 * math.sqrt(2) / math.sqrt(1 - 0.95 ** 2)}
failures = []


def fail(msg):
    failures.append(msg)


def read(path):
    if not os.path.isfile(path):
        print(f"FAIL: {path} was not written")
        sys.exit(1)
    with open(path) as f:
        return list(csv.DictReader(f))


def close(what, got, want, tol=1e-9):
    if not abs(got - want) <= tol * max(1.0, abs(want)):
        fail(f"{what}: {got!r} in the output, {want!r} recomputed")


def main():
    if len(sys.argv) != 3:
        print(__doc__)
        sys.exit(2)
    out, n_seeds = sys.argv[1], int(sys.argv[2])
    rows = read(os.path.join(out, "quality.csv"))
    summary = read(os.path.join(out, "summary.csv"))
    paired = read(os.path.join(out, "paired.csv"))
    table = open(os.path.join(out, "table.md")).read()

    models = sorted({r["model"] for r in rows})
    budgets = sorted({int(r["budget"]) for r in rows})
    cells = {}
    for r in rows:
        key = (r["model"], int(r["budget"]))
        cells.setdefault(key, {})
        if r["seed"] in cells[key]:
            fail(f"quality.csv: {key} seed {r['seed']} twice")
        cells[key][r["seed"]] = r
        for k in ("val_loss", "val_bpb", "training_flops"):
            if not math.isfinite(float(r[k])) or float(r[k]) <= 0:
                fail(f"quality.csv: {key} seed {r['seed']}: {k} {r[k]}")
    if "uoe" not in models or "dense" not in models:
        fail(f"quality.csv: models {models} lack uoe or dense")
    seed_sets = {tuple(sorted(v)) for v in cells.values()}
    if len(seed_sets) != 1 or len(next(iter(seed_sets))) != n_seeds:
        fail(f"quality.csv: the cells' seeds differ or are not {n_seeds}: {seed_sets}")
    for m in models:
        for b in budgets:
            if (m, b) not in cells:
                fail(f"quality.csv: no row of {m} at budget {b}")
            elif len({cells[(m, b)][s]["val_loss"] for s in cells[(m, b)]}) < 2:
                fail(f"quality.csv: {m} at budget {b} ends at the same val_loss for every seed")
    if "upcycled" in models:
        for b in budgets:
            for s, r in cells[("upcycled", b)].items():
                if int(r["dense_steps_before"]) < 1:
                    fail(f"upcycled budget {b} seed {s}: no dense steps before the conversion")
                dense = float(cells[("dense", b)][s]["training_flops"])
                if abs(float(r["training_flops"]) / dense - 1) > 0.10:
                    fail(f"upcycled budget {b} seed {s}: {r['training_flops']} training FLOPs against dense's {dense}")

    # summary.csv against the per-seed values
    if len(summary) != len(cells):
        fail(f"summary.csv: {len(summary)} rows for {len(cells)} cells")
    for c in summary:
        key = (c["model"], int(c["budget"]))
        vals = [float(r["val_loss"]) for r in cells.get(key, {}).values()]
        bpb = [float(r["val_bpb"]) for r in cells.get(key, {}).values()]
        if int(c["n"]) != n_seeds or len(vals) != n_seeds:
            fail(f"summary.csv {key}: n {c['n']}, want {n_seeds}")
            continue
        close(f"summary {key} val_loss mean", float(c["val_loss_mean"]), statistics.fmean(vals))
        close(f"summary {key} val_loss sd", float(c["val_loss_sd"]), statistics.stdev(vals))
        close(f"summary {key} val_bpb mean", float(c["val_bpb_mean"]), statistics.fmean(bpb))
        close(f"summary {key} val_bpb sd", float(c["val_bpb_sd"]), statistics.stdev(bpb))
        row = f"| {c['model']} |"
        want = f"{statistics.fmean(vals):.4f} ± {statistics.stdev(vals):.4f}"
        if not any(ln.startswith(row) and want in ln and f"| {c['budget']} |" in ln for ln in table.splitlines()):
            fail(f"table.md: no row '{row} … {c['budget']} … {want}'")

    # paired.csv against the per-seed differences
    want_pairs = {("uoe", m) for m in models if m != "uoe"} | ({("upcycled", "dense")} if "upcycled" in models else set())
    got_pairs = {}
    for p in paired:
        got_pairs.setdefault((p["a"], p["b"]), set()).add(int(p["budget"]))
    for pair in want_pairs:
        if got_pairs.get(pair) != set(budgets):
            fail(f"paired.csv: {pair} at budgets {sorted(got_pairs.get(pair, []))}, want {budgets}")
    df = n_seeds - 1
    for p in paired:
        a, b, budget = p["a"], p["b"], int(p["budget"])
        seeds = sorted(cells[(a, budget)])
        d = [float(cells[(b, budget)][s]["val_loss"]) - float(cells[(a, budget)][s]["val_loss"]) for s in seeds]
        m, sd = statistics.fmean(d), statistics.stdev(d)
        what = f"paired {a} vs {b} at {budget}"
        close(f"{what} mean", float(p["mean"]), m)
        close(f"{what} sd", float(p["sd"]), sd)
        if int(p["n"]) != n_seeds or int(p["df"]) != df:
            fail(f"{what}: n {p['n']}, df {p['df']}")
        if df in T_CLOSED:
            close(f"{what} t", float(p["t"]), T_CLOSED[df])
            half = T_CLOSED[df] * sd / math.sqrt(n_seeds)
            close(f"{what} lo", float(p["lo"]), m - half)
            close(f"{what} hi", float(p["hi"]), m + half)
        lo, hi = float(p["lo"]), float(p["hi"])
        want = f"{a} beats {b}" if lo > 0 else f"{b} beats {a}" if hi < 0 else "no claim (interval contains 0)"
        if p["claim"] != want:
            fail(f"{what}: claim '{p['claim']}', want '{want}' for [{lo}, {hi}]")
        if not any(f"| {budget} | {a} | {b} | {n_seeds} |" in ln and p["claim"] in ln for ln in table.splitlines()):
            fail(f"table.md: no comparison row for {what} with its claim")
    for word in ("commit ", "CPU ", "command `bench/quality", "wall time "):
        if word not in table:
            fail(f"table.md: no label '{word}'")

    if failures:
        print("FAIL:\n  " + "\n  ".join(failures))
        sys.exit(1)
    print(f"ok: {len(rows)} runs of {len(models)} models × {len(budgets)} budgets × {n_seeds} seeds; "
          f"{len(paired)} paired comparisons recomputed")


if __name__ == "__main__":
    main()
