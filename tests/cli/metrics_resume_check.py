#!/usr/bin/env python3
"""--metrics across runs: a fresh start truncates the file, a resumed run continues it as one run.

usage: metrics_resume_check.py OUTDIR UOE_TRAIN TRAIN_ARGS...

TRAIN_ARGS describe a tiny model (no --steps, --metrics, --checkpoint-dir, --resume, --log-every).
Checks (runtime/metrics.hpp, MetricsWriter):
- a run of 10 steps (checkpoints at 4 and 8, a line per step, an evaluation every 3 and at the end) is resumed from
  its step-8 checkpoint with --steps 12: the file then holds each step 1..12 once, in order, the
  evaluations of steps ≤ 12 once, one final line, last; the lines of steps ≤ 8 are the first run's,
  byte for byte, and every training loss equals an uninterrupted 12-step run's (bitwise resume);
- a torn last line (a run killed mid-write) is dropped on resume;
- a fresh run with the same --metrics path replaces the file: only its own lines.
"""
import json
import os
import shutil
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from check_helpers import fail, run  # noqa: E402


def rows(path):
    with open(path) as f:
        return [json.loads(ln) for ln in f.read().splitlines()]


def train_losses(path):
    return {r["step"]: r["train_loss"] for r in rows(path) if "train_loss" in r}


def check_one_run(path, steps):
    """Each step 1..steps once, in order; each evaluation (every 3 steps and the last) once; one final
    line, last."""
    evals = sorted(set(range(3, steps + 1, 3)) | {steps})
    rs = rows(path)
    got = [r["step"] for r in rs if "train_loss" in r]
    if got != list(range(1, steps + 1)):
        fail(f"{path}: training lines for steps {got}, expected 1..{steps} once each")
    ev = [r["step"] for r in rs if "val_loss" in r and not r.get("final")]
    if ev != evals:
        fail(f"{path}: evaluation lines at steps {ev}, expected {evals}")
    finals = [i for i, r in enumerate(rs) if r.get("final")]
    if finals != [len(rs) - 1] or rs[-1]["step"] != steps:
        fail(f"{path}: final lines at rows {finals} of {len(rs)} (step {rs[-1].get('step')}), expected one, last")


def main():
    out, train, args = sys.argv[1], sys.argv[2], sys.argv[3:]
    shutil.rmtree(out, ignore_errors=True)
    os.makedirs(out)
    m, ck = os.path.join(out, "m.jsonl"), os.path.join(out, "ck")
    common = [train, *args, "--log-every", "1", "--eval-every", "3", "--metrics", m]
    run([*common, "--steps", "10", "--checkpoint-dir", ck, "--checkpoint-every", "4", "--keep-last", "0"])
    check_one_run(m, 10)
    first = open(m).read().splitlines()
    head = [ln for ln in first if json.loads(ln).get("step", 99) <= 8 and not json.loads(ln).get("final")]
    with open(m, "a") as f:  # a run killed while writing a line
        f.write('{"step":11,"tokens":')
    _, text = run([*common, "--steps", "12", "--checkpoint-dir", ck, "--resume", os.path.join(ck, "step_00000008")])
    if "resumed from" not in text:
        fail(f"the second run did not resume:\n{text}")
    check_one_run(m, 12)
    resumed = open(m).read().splitlines()
    if resumed[:len(head)] != head:
        fail(f"{m}: the lines of steps <= 8 changed on resume")
    ref = os.path.join(out, "ref.jsonl")
    run([train, *args, "--log-every", "1", "--eval-every", "3", "--metrics", ref, "--steps", "12"])
    a, b = train_losses(m), train_losses(ref)
    if a != b:
        fail(f"interrupted + resumed losses differ from an uninterrupted run's: "
             f"{[(s, a.get(s), b.get(s)) for s in sorted(b) if a.get(s) != b[s]][:4]}")
    print(f"resumed at step 8 with --steps 12: steps 1..12 once each, evaluations 3/6/9/12, one final line; "
          f"losses equal an uninterrupted run's")
    # A fresh start with the same path: the file is this run's alone.
    run([*common, "--steps", "5"])
    check_one_run(m, 5)
    print("a fresh run with the same --metrics replaced the file")
    print("PASS")


if __name__ == "__main__":
    main()
