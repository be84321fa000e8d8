#!/usr/bin/env python3
"""A run that is interrupted and resumed ends bitwise where an uninterrupted run ends.

usage: resume_matches.py FAULT OUTDIR CMD...

FAULT is a UOE_FAULT value (launcher/trainer.cpp): kill:RANK:STEP (the job must fail: a lost rank)
or term:RANK:STEP (preemption: the job must exit 0 after committing a checkpoint). CMD is the
training command (mpirun ... uoe-train ...); this script appends --checkpoint-dir, --metrics and,
for the second leg, --resume auto. Passes when the resumed run's final val_loss and every
train_loss it logs equal the uninterrupted run's, bitwise.
"""
import os
import shutil
import subprocess
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from check_helpers import fail, metrics  # noqa: E402


def run(cmd, log, env=None):
    with open(log, "w") as out:
        return subprocess.call(cmd, stdout=out, stderr=subprocess.STDOUT, timeout=300, env=env)


def main():
    fault, out, cmd = sys.argv[1], sys.argv[2], sys.argv[3:]
    shutil.rmtree(out, ignore_errors=True)
    os.makedirs(out)
    ref = cmd + ["--checkpoint-dir", f"{out}/ref_ckpt", "--metrics", f"{out}/ref.jsonl"]
    if run(ref, f"{out}/ref.log") != 0:
        fail("the uninterrupted run failed", f"{out}/ref.log")
    leg = cmd + ["--checkpoint-dir", f"{out}/ckpt", "--metrics", f"{out}/leg.jsonl"]
    rc = run(leg, f"{out}/leg1.log", dict(os.environ, UOE_FAULT=fault))
    kind = fault.split(":")[0]
    if kind == "kill" and rc == 0:
        fail("the killed run exited 0", f"{out}/leg1.log")
    if kind == "term":
        if rc != 0:
            fail(f"the preempted run exited {rc}, expected 0", f"{out}/leg1.log")
        if "preempted" not in open(f"{out}/leg1.log").read():
            fail("the preempted run did not say it was preempted", f"{out}/leg1.log")
    if not os.path.exists(f"{out}/ckpt/latest"):
        fail("no committed checkpoint after the interruption", f"{out}/leg1.log")
    if run(leg + ["--resume", "auto"], f"{out}/leg2.log") != 0:
        fail("the resumed run failed", f"{out}/leg2.log")
    log2 = open(f"{out}/leg2.log").read()
    if "resumed from" not in log2:
        fail("the second run did not resume", f"{out}/leg2.log")
    ref_train, ref_final = metrics(f"{out}/ref.jsonl")
    leg_train, leg_final = metrics(f"{out}/leg.jsonl")
    if not ref_final or leg_final[-1:] != ref_final:
        fail(f"final val_loss {leg_final[-1:]} after resuming, {ref_final} uninterrupted")
    # The resumed leg re-logs steps after its checkpoint; later lines overwrite earlier ones.
    for step, loss in leg_train.items():
        if ref_train.get(step) != loss:
            fail(f"step {step}: train_loss {loss!r} after resuming, {ref_train.get(step)!r} uninterrupted")
    print(f"PASS: resumed run matches bitwise ({len(leg_train)} logged steps, final val_loss {ref_final[0]!r})")


if __name__ == "__main__":
    main()
