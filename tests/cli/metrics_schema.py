#!/usr/bin/env python3
"""The metrics file has the keys the README documents, and no others; its lr follows the schedule,
also across a preemption and resume.

usage: metrics_schema.py README OUTDIR UOE_TRAIN

Reads the README's example lines of `--metrics FILE` (the indented `{...}` block after "`--metrics
FILE` writes JSON lines"): a training line, an evaluation line and the final line. Runs UOE_TRAIN
(byte level, top-2: the example's experts_per_token_0..2, val_bpb) for 8 steps with --metrics and
checks each kind of line has exactly the documented keys, so README and code cannot drift apart.
Then the learning rate: every logged lr equals the warm-up + cosine formula (1e-12 relative), and a
run preempted at step 5 (UOE_FAULT=term, checkpoint) and resumed logs, at every later step, the lr
the uninterrupted run logged, bitwise.
"""
import json
import math
import os
import re
import shutil
import subprocess
import sys

STEPS, WARMUP, LR, MIN_LR = 8, 3, 1e-3, 1e-4


def documented(readme):
    text = open(readme).read()
    at = text.find("`--metrics FILE` writes JSON lines")
    if at < 0:
        sys.exit("FAIL: the README no longer says what `--metrics FILE` writes")
    entries = []  # one per example line; an example may wrap onto more indented lines
    for line in text[at:].splitlines()[1:]:
        if entries and not line.startswith("    "):
            break
        if re.match(r"\s{4}\{", line):
            entries.append(line)
        elif entries:
            entries[-1] += line
    kinds = {}
    for entry in entries:
        keys = set(re.findall(r'"([A-Za-z0-9_]+)":', entry))
        kind = "final" if "final" in keys else "train" if "train_loss" in keys else "eval"
        kinds[kind] = keys
    if set(kinds) != {"train", "eval", "final"}:
        sys.exit(f"FAIL: expected a training, an evaluation and a final example line in the README, found {sorted(kinds)}")
    return kinds


def run(cmd, log, env=None):
    with open(log, "w") as out:
        rc = subprocess.call(cmd, stdout=out, stderr=subprocess.STDOUT, timeout=120,
                             env=dict(os.environ, **(env or {})))
    if rc != 0:
        sys.exit(f"FAIL: exit {rc} from {' '.join(cmd)}; log {log}:\n{open(log).read()[-3000:]}")


def lines(path):
    return [json.loads(l) for l in open(path)]


def kind_of(row):
    return "final" if row.get("final") else "train" if "train_loss" in row else "eval"


def lr_at_step(s):  # layers/optimizer.cpp
    if WARMUP > 0 and s <= WARMUP:
        return LR * s / WARMUP
    t = (s - WARMUP) / (STEPS - WARMUP)
    return MIN_LR + 0.5 * (LR - MIN_LR) * (1 + math.cos(math.pi * t))


def main():
    readme, out, train = sys.argv[1], os.path.abspath(sys.argv[2]), sys.argv[3]
    shutil.rmtree(out, ignore_errors=True)
    os.makedirs(out)
    want = documented(readme)
    base = [train, "--steps", str(STEPS), "--warmup", str(WARMUP), "--lr", str(LR), "--min-lr", str(MIN_LR),
            "--log-every", "1", "--eval-every", "4", "--eval-batches", "1", "--layers", "1", "--d-model", "32",
            "--d-ff", "64", "--batch-size", "2", "--seq-len", "16", "--topk", "2", "--checkpoint-every", "2"]
    run(base + ["--metrics", f"{out}/ref.jsonl", "--checkpoint-dir", f"{out}/ref_ckpt"], f"{out}/ref.log")
    ref = lines(f"{out}/ref.jsonl")
    problems = []
    seen = set()
    for row in ref:
        kind = kind_of(row)
        seen.add(kind)
        got = set(row)
        if got != want[kind]:
            problems.append(f"{kind} line of step {row.get('step')}: missing from the file "
                            f"{sorted(want[kind] - got)}, not in the README {sorted(got - want[kind])}")
    if seen != {"train", "eval", "final"}:
        problems.append(f"the run wrote only {sorted(seen)} lines")
    ref_lr = {r["step"]: r["lr"] for r in ref if "lr" in r}
    if sorted(ref_lr) != list(range(1, STEPS + 1)):
        problems.append(f"lr logged at steps {sorted(ref_lr)}, expected 1..{STEPS}")
    for s, lr in ref_lr.items():
        if not math.isclose(lr, lr_at_step(s), rel_tol=1e-12):
            problems.append(f"step {s}: lr {lr!r}, the schedule says {lr_at_step(s)!r}")

    # Preempted at step 5 (checkpoint written, exit 0), then resumed to the end.
    ckpt = f"{out}/ckpt"
    run(base + ["--metrics", f"{out}/first.jsonl", "--checkpoint-dir", ckpt], f"{out}/first.log",
        {"UOE_FAULT": "term:0:5"})
    if open(f"{ckpt}/latest").read().strip() != "step_00000005":
        problems.append(f"the preempted run did not commit step 5 (latest: {open(f'{ckpt}/latest').read().strip()})")
    run(base + ["--metrics", f"{out}/resumed.jsonl", "--checkpoint-dir", ckpt, "--resume", "auto"], f"{out}/resumed.log")
    resumed = {r["step"]: r["lr"] for r in lines(f"{out}/resumed.jsonl") if "lr" in r}
    if sorted(resumed) != list(range(6, STEPS + 1)):
        problems.append(f"the resumed run logged lr at steps {sorted(resumed)}, expected 6..{STEPS}")
    for s, lr in resumed.items():
        if lr != ref_lr.get(s):
            problems.append(f"step {s}: lr {lr!r} after resuming at 5, {ref_lr.get(s)!r} uninterrupted")
    if problems:
        print("FAIL:\n  " + "\n  ".join(problems))
        return 1
    print(f"ok: {len(ref)} metrics lines carry exactly the README's keys ({len(want['train'])} per training line); "
          f"lr follows the schedule at steps 1..{STEPS} and, resumed at step 5, continues it bitwise")
    return 0


if __name__ == "__main__":
    sys.exit(main())
