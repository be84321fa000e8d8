#!/usr/bin/env python3
"""--precision bf16 through the trainer: it learns, checkpoints hold the fp32 master state and record
the precision, and checkpoints resume across precisions.

usage: precision_check.py OUTDIR UOE_CKPT UOE_TRAIN ARGS...

UOE_TRAIN ARGS is a training command without --steps, --precision, --checkpoint-dir, --metrics,
--resume (this script adds them). Checks, in order:
 1. a bf16 run of 12 steps (checkpoints at 4, 8, 12) learns: its final val_loss is below its first
    train_loss by at least 0.3 nats, and every loss is finite;
 2. its checkpoints record the precision (`uoe-ckpt info --json`: config.precision = bf16);
 3. resumed at step 4 in bf16, it ends bitwise where it ended (every train_loss and the final
    val_loss);
 4. resumed at step 4 in fp32 (bf16 → fp32), the log warns that --precision differs from the
    checkpoint's, the run trains to step 12, its checkpoints record fp32, and its losses differ from
    the bf16 run's (it computed in fp32) by less than 2% (the two precisions' difference);
 5. that fp32 run's step-8 checkpoint resumed in bf16 (fp32 → bf16) trains to step 12 and ends
    bitwise where a second such resumption ends.
"""
import json
import math
import os
import shutil
import subprocess
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from check_helpers import metrics  # noqa: E402


def fail(msg, log=None):
    print("FAIL:", msg)
    if log:
        print(open(log).read()[-4000:])
    sys.exit(1)


def run(cmd, log):
    with open(log, "w") as out:
        rc = subprocess.call(cmd, stdout=out, stderr=subprocess.STDOUT, timeout=300)
    if rc != 0:
        fail(f"exit {rc} from {' '.join(cmd)}", log)
    return open(log).read()


def stored_precision(ckpt_tool, step_dir, out):
    info = subprocess.run([ckpt_tool, "info", step_dir, "--json"], capture_output=True, text=True, timeout=60)
    if info.returncode != 0:
        fail(f"uoe-ckpt info {step_dir}: exit {info.returncode}: {info.stderr}")
    return json.loads(info.stdout)["config"].get("precision")


def main():
    out, ckpt_tool, train = sys.argv[1], sys.argv[2], sys.argv[3:]
    shutil.rmtree(out, ignore_errors=True)
    os.makedirs(out)

    def leg(name, precision, steps, resume=None):
        cmd = train + ["--steps", str(steps), "--precision", precision, "--checkpoint-every", "4",
                       "--checkpoint-dir", f"{out}/{name}_ckpt", "--metrics", f"{out}/{name}.jsonl"]
        if resume:
            cmd += ["--resume", resume]
        log = run(cmd, f"{out}/{name}.log")
        return log, metrics(f"{out}/{name}.jsonl")

    # 1. bf16 learns.
    _, (bf_train, bf_final) = leg("bf16", "bf16", 12)
    if not bf_final or not bf_train:
        fail("the bf16 run logged no losses", f"{out}/bf16.log")
    if not all(math.isfinite(v) for v in list(bf_train.values()) + bf_final):
        fail(f"non-finite losses in bf16: {bf_train} {bf_final}")
    first = bf_train[min(bf_train)]
    if not bf_final[0] < first - 0.3:
        fail(f"bf16 did not learn: first train_loss {first}, final val_loss {bf_final[0]}")
    # 2. The checkpoint records its precision.
    for step in (4, 12):
        p = stored_precision(ckpt_tool, f"{out}/bf16_ckpt/step_{step:08d}", out)
        if p != "bf16":
            fail(f"the bf16 run's step-{step} checkpoint records precision {p!r}")
    # 3. bf16 resumes bitwise in bf16.
    _, (re_train, re_final) = leg("bf16_resumed", "bf16", 12, f"{out}/bf16_ckpt/step_00000004")
    for step, loss in re_train.items():
        if step > 4 and bf_train.get(step) != loss:
            fail(f"bf16 resumed in bf16: step {step} train_loss {loss!r}, uninterrupted {bf_train.get(step)!r}")
    if re_final != bf_final:
        fail(f"bf16 resumed in bf16: final val_loss {re_final}, uninterrupted {bf_final}")
    # 4. bf16 → fp32.
    log, (f_train, f_final) = leg("to_fp32", "fp32", 12, f"{out}/bf16_ckpt/step_00000004")
    if "--precision bf16 in the checkpoint, fp32 now" not in log:
        fail("resuming a bf16 checkpoint in fp32 did not warn that the precision differs", f"{out}/to_fp32.log")
    if stored_precision(ckpt_tool, f"{out}/to_fp32_ckpt/step_00000008", out) != "fp32":
        fail("the fp32 continuation's checkpoint does not record fp32")
    later = [s for s in f_train if s > 4]
    if not later or max(later) != 12 or not f_final:
        fail(f"the fp32 continuation did not train to step 12: steps {sorted(f_train)}", f"{out}/to_fp32.log")
    same = [s for s in later if f_train[s] == bf_train.get(s)]
    if len(same) == len(later):
        fail("the fp32 continuation logged the bf16 run's losses bitwise: it did not compute in fp32")
    for s in later:
        if abs(f_train[s] - bf_train[s]) > 0.02 * abs(bf_train[s]):
            fail(f"step {s}: fp32 continuation train_loss {f_train[s]}, bf16 {bf_train[s]}: more than 2% apart")
    # 5. fp32 → bf16, twice: bitwise the same.
    _, (b1_train, b1_final) = leg("back_to_bf16", "bf16", 12, f"{out}/to_fp32_ckpt/step_00000008")
    _, (b2_train, b2_final) = leg("back_to_bf16_again", "bf16", 12, f"{out}/to_fp32_ckpt/step_00000008")
    if not b1_final or b1_final != b2_final or b1_train != b2_train:
        fail(f"fp32 → bf16 resumptions differ: {b1_train} {b1_final} vs {b2_train} {b2_final}")
    print(f"PASS: bf16 learns ({first:.4f} → {bf_final[0]:.4f}), resumes bitwise, and resumes in fp32 and back "
          f"(final val_loss fp32 continuation {f_final[0]:.4f}, bf16 {bf_final[0]:.4f})")


if __name__ == "__main__":
    main()
