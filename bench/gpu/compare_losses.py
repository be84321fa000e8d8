#!/usr/bin/env python3
"""Do a CUDA training run and the CPU run of the same seed agree? device-kit's verdict on them.

usage: compare_losses.py CPU.jsonl CUDA.jsonl [--early-steps N] [--early-rtol R] [--rtol R]

Both files are uoe-train --metrics output of the same configuration and seed. The tolerance
(docs/gpu.md, step 7a): the two loss curves agree to 1e-3 relative until a routing near-tie parts
them — float sums in another order flip a top-k choice sooner or later, after which the runs are
two trainings of the same model on the same batches. So every logged train_loss must be within
--early-rtol (1e-3) of the CPU run's up to step --early-steps (50), and within --rtol (5e-2) after;
a GPU path that trains wrongly (no update, a wrong gradient, a broken kernel) leaves the CPU curve
by far more than that within a few hundred steps. Every loss must be finite, and the CUDA run must
have logged every step the CPU run did.

Prints one line per verdict and the figures; exits 0 when they agree, 1 when not (naming the
first step out of tolerance), 2 on unusable input.
"""
import argparse
import json
import math
import sys


def losses(path):
    try:
        rows = [json.loads(line) for line in open(path) if line.strip()]
    except (OSError, ValueError) as e:
        print(f"   loss curves: cannot read {path}: {e}")
        sys.exit(2)
    return {r["step"]: r for r in rows if "train_loss" in r}


def compare(cpu, gpu, early_steps, early_rtol, rtol):
    """Returns (problems, summary): the reasons they disagree (empty when they agree) and figures."""
    problems = []
    if not cpu:
        return ["the CPU run logged no training loss"], ""
    missing = sorted(set(cpu) - set(gpu))
    if missing:
        problems.append(f"the CUDA run logged no loss at steps {missing[:5]}{' …' if len(missing) > 5 else ''}")
    common = sorted(set(cpu) & set(gpu))
    worst, first_bad = 0.0, None
    for s in common:
        a, b = cpu[s]["train_loss"], gpu[s]["train_loss"]
        if not (math.isfinite(a) and math.isfinite(b)):
            problems.append(f"step {s}: a non-finite loss (cpu {a}, cuda {b})")
            first_bad = first_bad or s
            continue
        rel = abs(b - a) / abs(a)
        worst = max(worst, rel)
        limit = early_rtol if s <= early_steps else rtol
        if rel > limit and first_bad is None:
            first_bad = s
            problems.append(f"step {s}: cuda loss {b:.6f}, cpu {a:.6f}: relative difference {rel:.2e} above "
                            f"{limit:.0e} ({'up to' if s <= early_steps else 'after'} step {early_steps})")
    summary = f"{len(common)} logged steps, largest relative difference {worst:.2e}"
    if common:
        last = common[-1]
        summary += f"; final cpu {cpu[last]['train_loss']:.4f} cuda {gpu[last]['train_loss']:.4f}"
    return problems, summary


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("cpu")
    ap.add_argument("cuda")
    ap.add_argument("--early-steps", type=int, default=50)
    ap.add_argument("--early-rtol", type=float, default=1e-3)
    ap.add_argument("--rtol", type=float, default=5e-2)
    a = ap.parse_args()
    cpu, gpu = losses(a.cpu), losses(a.cuda)
    problems, summary = compare(cpu, gpu, a.early_steps, a.early_rtol, a.rtol)
    print(f"   loss curves: {summary}")
    if gpu:
        last = gpu[max(gpu)]
        for key in ("tokens_per_s", "model_flops_per_s"):
            if key in last:
                print(f"   cuda {key} at step {max(gpu)}: {last[key]:.4g}")
    if problems:
        for p in problems:
            print(f"   DISAGREE: {p}")
        return 1
    print(f"   agree: within {a.early_rtol:.0e} to step {a.early_steps}, {a.rtol:.0e} after")
    return 0


if __name__ == "__main__":
    sys.exit(main())
