#!/usr/bin/env python3
"""Runs two training commands and compares every loss they log, and optionally every gradient.

usage: compare_runs.py OUTDIR RTOL [--grads GRTOL] [--grad-steps N] [--min-lr LR] [--min-steps N] [--fault-a SPEC]
                      CMD_A... --then CMD_B...

Each command gets `--metrics OUTDIR.{a,b}.jsonl` appended. Passes when both exit 0, log the same
number of train_loss and val_loss values (at least --min-steps, default 3), and every pair agrees within relative
RTOL (RTOL 0 demands bitwise equality: the metrics hold 17 significant digits, which round-trip).
Used for the project's contracts: determinism (A = B), expert-parallel equivalence (P ranks vs
one rank with P micro-batches) and overlap equivalence (chunked vs serial exchanges).

--grads GRTOL  also appends --metrics-grads and compares, at every logged step, grad_norm and each
               tensor's gradient fingerprint [sum of squares, checksum Σ g·w] (see
               GradientSync::global_fingerprint): grad_norm and the sum of squares within relative
               GRTOL, the checksum within GRTOL·sqrt(sum of squares). Why that scale: the weights w
               are ±1, pseudo-random and independent of any error pattern δg in the gradient, so
               Σ δg·w has standard deviation |δg| ≤ ε·|g| when the gradients differ by relative ε;
               relative to Σ g·w itself (which cancels towards 0) no tolerance would be meaningful.
               A mismatch prints "gradient mismatch" with the step, the tensor and both values.
--grad-steps N compares the gradients of the logged steps up to step N only (default: all). Two
               layouts' parameters drift apart as training compounds their rounding differences,
               until a routing decision at a capacity limit or a top-k tie flips, changing one
               step's gradient by far more than rounding: losses average that out, one tensor's
               gradient at one step does not.
               With --grads, each step's metrics also carry routing_check (StepFigures::routing_check:
               a hash of every micro-batch's routing). From the first step whose routing_check
               differs between A and B — a decision rounding flipped — nothing is compared (neither
               gradients nor losses nor validation after it); at least --min-steps steps must
               remain, so a bug that changes routing from the start still fails.
--min-lr LR    fails unless some logged step of A trained at a learning rate of at least LR: AdamW's
               update hardly depends on a gradient's scale, so a comparison of losses during the
               first steps of warm-up cannot see a gradient that is wrong by a factor.
--min-steps N  the steps (losses, and gradient fingerprints with --grads) that must be compared
               (default 3). In bf16 the layouts' rounding differences are wider (a weight on either
               side of a bf16 rounding boundary), and a top-k tie flips between them as early as
               step 3 with a real kernel's rounding: those comparisons take 2 (step 1's gradients at
               identical parameters, step 2's after one AdamW update at full learning rate).
--fault-a SPEC runs A with UOE_FAULT=SPEC (B without): the negative tests, which must fail.
"""
import json
import math
import os
import subprocess
import sys


def lines(path, key):
    with open(path) as f:
        return [json.loads(line) for line in f if f'"{key}"' in line]


def losses(path, key):
    return [j[key] for j in lines(path, key)]


def run(cmd, metrics, log, fault=None):
    env = dict(os.environ)
    env.pop("UOE_FAULT", None)
    if fault:
        env["UOE_FAULT"] = fault
    with open(log, "w") as out:
        try:
            rc = subprocess.call(cmd + ["--metrics", metrics], stdout=out, stderr=subprocess.STDOUT, timeout=600,
                                 env=env)
        except subprocess.TimeoutExpired:
            rc = "timeout (hang?)"
    if rc != 0:
        print(f"FAIL: {rc}: {' '.join(cmd)}" + (f" (UOE_FAULT={fault})" if fault else ""))
        print(open(log).read())
        sys.exit(1)


def first_routing_difference(path_a, path_b):
    """The first logged step whose routing_check differs between A and B, or None."""
    a = {j["step"]: j.get("routing_check") for j in lines(path_a, "grads")}
    b = {j["step"]: j.get("routing_check") for j in lines(path_b, "grads")}
    for step in sorted(set(a) & set(b)):
        if a[step] != b[step]:
            return step
    return None


def compare_grads(path_a, path_b, gtol, last_step, min_steps):
    """Returns (failures, steps compared, fingerprints compared, worst relative difference)."""
    a = [j for j in lines(path_a, "grads") if last_step is None or j["step"] <= last_step]
    b = [j for j in lines(path_b, "grads") if last_step is None or j["step"] <= last_step]
    if len(a) != len(b) or not a:
        return [f"gradient fingerprints of {len(a)} steps from A, {len(b)} from B (need the same, at least {min_steps})"], 0, 0, 0.0
    failures, count, worst = [], 0, 0.0
    if len(a) < min_steps:  # still compared below: a bug shows as a mismatch at its first step
        failures.append(f"gradient fingerprints of only {len(a)} steps to compare (need at least {min_steps})")
    first_differing = None  # (step, the tensors that differ there, of how many): which bug it is
    for ja, jb in zip(a, b):
        step = ja["step"]
        if jb["step"] != step:
            failures.append(f"step {step} (A) vs step {jb['step']} (B) in the same line")
            continue
        x, y = ja["grad_norm"], jb["grad_norm"]
        rel = abs(x - y) / max(abs(x), abs(y), 1e-300)
        worst = max(worst, rel)
        if rel > gtol:
            failures.append(f"gradient mismatch at step {step}: grad_norm {x!r} (A) vs {y!r} (B), "
                            f"relative difference {rel:.3g} > {gtol}")
        ga, gb = ja["grads"], jb["grads"]
        differing = []
        for name in sorted(set(ga) | set(gb)):
            if name not in ga or name not in gb:
                failures.append(f"gradient mismatch at step {step}: tensor {name} only in {'A' if name in ga else 'B'}")
                differing.append(name)
                continue
            (sa, ca), (sb, cb) = ga[name], gb[name]
            scale = max(sa, sb)
            rel_sq = abs(sa - sb) / scale if scale > 0 else 0.0
            rel_dot = abs(ca - cb) / math.sqrt(scale) if scale > 0 else abs(ca - cb)
            worst = max(worst, rel_sq, rel_dot)
            count += 1
            if rel_sq > gtol:
                failures.append(f"gradient mismatch at step {step}: tensor {name}: sum of squares {sa!r} (A) vs {sb!r} "
                                f"(B), relative difference {rel_sq:.3g} > {gtol}")
            if rel_dot > gtol:
                failures.append(f"gradient mismatch at step {step}: tensor {name}: checksum {ca!r} (A) vs {cb!r} (B), "
                                f"difference {rel_dot:.3g} × its gradient norm > {gtol}")
            if max(rel_sq, rel_dot) > gtol:
                differing.append(name)
        if differing and first_differing is None:
            first_differing = (step, differing, len(set(ga) | set(gb)))
    if first_differing:
        step, differing, total = first_differing
        failures.append(f"{len(differing)} of {total} tensors differ at step {step}: {', '.join(differing)}")
    if count == 0:
        failures.append("no gradient fingerprints compared")
    return failures, len(a), count, worst


def main():
    out, rtol = sys.argv[1], float(sys.argv[2])
    args = sys.argv[3:]
    gtol, grad_steps, min_lr, fault, min_steps = None, None, None, None, 3
    while args and args[0] in ("--grads", "--grad-steps", "--min-lr", "--min-steps", "--fault-a"):
        flag, value, args = args[0], args[1], args[2:]
        if flag == "--grads":
            gtol = float(value)
        elif flag == "--grad-steps":
            grad_steps = int(value)
        elif flag == "--min-lr":
            min_lr = float(value)
        elif flag == "--min-steps":
            min_steps = int(value)
        else:
            fault = value
    split = args.index("--then")
    cmd_a, cmd_b = args[:split], args[split + 1:]
    if gtol is not None:
        cmd_a, cmd_b = cmd_a + ["--metrics-grads"], cmd_b + ["--metrics-grads"]
    run(cmd_a, f"{out}.a.jsonl", f"{out}.a.log", fault)
    run(cmd_b, f"{out}.b.jsonl", f"{out}.b.log")

    failures = []  # every kind of disagreement is reported, so a test can tell which one it saw
    if min_lr is not None:
        top = max(losses(f"{out}.a.jsonl", "lr"), default=0.0)
        if top < min_lr:
            failures.append(f"the largest learning rate logged is {top!r} < --min-lr {min_lr}: too early in the "
                            "warm-up for the comparison to see a gradient's scale")
    grad_summary, flip = "", None
    if gtol is not None:
        flip = first_routing_difference(f"{out}.a.jsonl", f"{out}.b.jsonl")
        last = grad_steps if flip is None else min(flip - 1, grad_steps if grad_steps is not None else flip - 1)
        grad_failures, steps, count, gworst = compare_grads(f"{out}.a.jsonl", f"{out}.b.jsonl", gtol, last, min_steps)
        if len(grad_failures) > 11:  # the first 10, and the differing tensors' list
            failures.append(f"{len(grad_failures) - 1} gradient disagreements, the first 10:")
            grad_failures = grad_failures[:10] + grad_failures[-1:]
        failures += grad_failures
        grad_summary = (f"; {count} gradient fingerprints over {steps} steps, worst relative difference "
                        f"{gworst:.3g} (tolerance {gtol})")
        if flip is not None:
            grad_summary += (f"; routing differs from step {flip} on (a capacity or top-k decision flipped): "
                             "nothing compared from there")
    worst, count = 0.0, 0
    for key in ("train_loss", "val_loss"):
        a, b = losses(f"{out}.a.jsonl", key), losses(f"{out}.b.jsonl", key)
        if flip is not None:
            a = [j[key] for j in lines(f"{out}.a.jsonl", key) if j["step"] < flip]
            b = [j[key] for j in lines(f"{out}.b.jsonl", key) if j["step"] < flip]
            if key == "val_loss" and not a and not b:
                continue  # no evaluation before the flip
        if len(a) != len(b) or not a:
            failures.append(f"{key}: {len(a)} values from A, {len(b)} from B")
            continue
        for i, (x, y) in enumerate(zip(a, b)):
            rel = abs(x - y) / abs(y) if y else abs(x)
            worst = max(worst, rel)
            count += 1
            if rel > rtol:
                failures.append(f"{key} #{i}: {x!r} (A) vs {y!r} (B), relative difference {rel:.3g} > {rtol}")
                break
    if count < min_steps:
        failures.append(f"only {count} losses logged (need at least {min_steps})")
    if failures:
        for f in failures:
            print(f"FAIL: {f}")
        sys.exit(1)
    print(f"PASS: {count} losses, worst relative difference {worst:.3g} (tolerance {rtol}){grad_summary}")


if __name__ == "__main__":
    main()
