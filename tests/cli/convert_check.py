#!/usr/bin/env python3
"""uoe-ckpt convert end to end: upcycling a trained dense model, round trips, bad input.

usage: convert_check.py OUTDIR UOE_CKPT UOE_TRAIN TRAIN_ARGS...

TRAIN_ARGS describe a tiny model with 4 heads and a d-ff divisible by 4 (no --block-type, --steps,
--checkpoint-dir, --metrics, --resume). Checks:
- a dense model trained 20 steps (uoe-train, checkpoint) converts to UoE (2 attention experts, 4 MLP
  experts) with --check passing; routers are said to be initialised; the step is 0 and the moments
  zero (a fresh warm-up is announced);
- dense → UoE → dense gives every parameter tensor back bitwise;
- `uoe-train --config OUT/train.ini` resumes the UoE checkpoint for 10 steps: every loss finite, the
  first close to the dense model's last (top-2 of 4: only sane, logged);
- in the equivalence limit (every expert, dropless, sum gates) with --keep-step, the resumed UoE
  run's first loss (step 21) equals the dense run's own step 21, resumed from the same checkpoint,
  to 1e-5 relative: upcycling changes nothing the model computes;
- the data order goes on (step 0, a fresh schedule): train.ini says --data-offset 20, and with the
  weights frozen (--lr 1e-30) the converted model's losses at its steps 1..10, in the equivalence
  limit, are the dense run's at steps 21..30 (resumed from step 20, frozen too) to 1e-5 relative:
  every training window is the one the dense run draws next, none of its first ones again;
- UoE (trained 10 steps) → dense → UoE keeps every expert weight and norm bitwise, and the routers
  are a fresh run's initialisation (the same seed), not the trained ones;
- bad input (not a checkpoint, expert counts that cannot cut the shape, an --out that holds files,
  a missing count) is refused with a message naming it, and --out is left absent or unchanged.
"""
import json
import math
import os
import re
import subprocess
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import checkpoint_equal  # noqa: E402  (its h5dump helpers read datasets without h5py)
from check_helpers import fail, run  # noqa: E402


def tensors(step_dir, group="/model/"):
    """{name: bytes} of every dataset under `group` of a one-shard checkpoint."""
    shard = os.path.join(step_dir, "shard_00000_of_00001.h5")
    out = {}
    with tempfile.TemporaryDirectory() as t:
        for d in checkpoint_equal._h5dump_datasets(shard):
            if d.startswith(group):
                out[d[len(group):]] = checkpoint_equal._h5dump_bytes(shard, d, f"{t}/x")
    if not out:
        fail(f"no datasets under {group} in {shard}")
    return out


def losses(path):
    with open(path) as f:
        rows = [json.loads(line) for line in f if line.strip()]
    return {r["step"]: r["train_loss"] for r in rows if "train_loss" in r}


def refused(cmd, regex, out_dir, code=1):
    """cmd must fail with `code`, print a message matching regex, and leave out_dir as it was."""
    before = sorted(os.listdir(out_dir)) if os.path.isdir(out_dir) else None
    rc, text = run(cmd, expect=None)
    if rc != code:
        fail(f"exit {rc}, expected {code}, from: {' '.join(cmd)}\n{text}")
    if not re.search(regex, text):
        fail(f"message does not match /{regex}/: {' '.join(cmd)}\n{text}")
    after = sorted(os.listdir(out_dir)) if os.path.isdir(out_dir) else None
    if after != before:
        fail(f"{out_dir} changed ({before} → {after}) after a refused conversion: {' '.join(cmd)}")
    print(f"refused as expected: {' '.join(cmd[1:])}\n  {text.strip().splitlines()[-1]}")


def main():
    out, ckpt, train, args = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4:]
    subprocess.run(["rm", "-rf", out])
    os.makedirs(out)
    j = lambda *p: os.path.join(out, *p)  # noqa: E731
    logs = ["--log-every", "1", "--threads", "1"]

    # A dense model, 20 steps, checkpointed.
    run([train, *args, *logs, "--block-type", "dense", "--steps", "20", "--checkpoint-dir", j("dense"),
         "--metrics", j("dense.jsonl")])
    dense_losses = losses(j("dense.jsonl"))
    dense20 = j("dense", "step_00000020")

    # Upcycle: dense → UoE, checked.
    _, text = run([ckpt, "convert", j("dense"), "--to", "uoe", "--out", j("up"), "--attn-experts", "2",
                   "--experts", "4", "--check"])
    print(text)
    for must in ("check passed", "routers initialised", "step 0, AdamW moments zero", "fresh warm-up",
                 "wrote .*step_00000000"):
        if not re.search(must, text):
            fail(f"convert --to uoe did not say /{must}/")
    up0 = j("up", "step_00000000")
    for name, data in tensors(up0, "/optim/").items():
        if data.count(0) != len(data):
            fail(f"/optim/{name} of the converted checkpoint is not zero")

    # dense → UoE → dense: every tensor bitwise.
    _, text = run([ckpt, "convert", up0, "--to", "dense", "--out", j("back"), "--check"])
    if "routers dropped" not in text:
        fail(f"convert --to dense did not say the routers were dropped:\n{text}")
    a, b = tensors(dense20), tensors(j("back", "step_00000000"))
    if a.keys() != b.keys():
        fail(f"tensors differ: {sorted(set(a) ^ set(b))}")
    bad = [n for n in a if a[n] != b[n]]
    if bad:
        fail(f"dense → uoe → dense changed {bad}")
    print(f"dense → uoe → dense: all {len(a)} tensors bitwise identical")

    # Resume the UoE checkpoint for 10 steps (top-2 of 4 experts: the model changes, sanely).
    run([train, "--config", j("up", "train.ini"), *logs, "--steps", "10", "--metrics", j("up.jsonl")])
    up_losses = losses(j("up.jsonl"))
    if sorted(up_losses) != list(range(1, 11)):
        fail(f"resumed UoE run logged steps {sorted(up_losses)}, expected 1..10")
    if not all(math.isfinite(v) for v in up_losses.values()):
        fail(f"non-finite loss after upcycling: {up_losses}")
    last_dense, first_up = dense_losses[20], up_losses[1]
    print(f"upcycled (top-2 of 4, fresh warm-up): dense step 20 loss {last_dense:.4f}, UoE step 1 loss "
          f"{first_up:.4f} (difference {first_up - last_dense:+.4f}), UoE step 10 loss {up_losses[10]:.4f}")
    if abs(first_up - last_dense) > 0.5:
        fail("the upcycled model's first loss is far from the dense model's last")

    # The equivalence limit, with the old schedule: the first UoE step is the dense step exactly.
    _, text = run([ckpt, "convert", dense20, "--to", "uoe", "--out", j("exact"), "--attn-experts", "2",
                   "--experts", "4", "--attn-topk", "2", "--topk", "4", "--capacity-factor", "0", "--gate", "sum",
                   "--keep-step", "--check"])
    if not re.search(r"step 20 kept: .*continues at step 21", text):
        fail(f"--keep-step did not say where the run continues:\n{text}")
    run([train, "--config", j("exact", "train.ini"), *logs, "--steps", "30", "--metrics", j("exact.jsonl")])
    run([train, *args, *logs, "--block-type", "dense", "--steps", "30", "--resume", dense20, "--checkpoint-dir",
         j("dense_more"), "--metrics", j("dense_more.jsonl")])
    ex, dn = losses(j("exact.jsonl")), losses(j("dense_more.jsonl"))
    if min(ex) != 21 or min(dn) != 21:
        fail(f"resumed runs start at steps {min(ex)} and {min(dn)}, expected 21")
    rel = abs(ex[21] - dn[21]) / abs(dn[21])
    print(f"equivalence limit, --keep-step: step 21 loss UoE {ex[21]!r}, dense {dn[21]!r} (relative {rel:.2e}); "
          f"step 30: {ex[30]:.4f} vs {dn[30]:.4f}")
    if rel > 1e-5:
        fail("the upcycled model in the equivalence limit does not compute the dense model's loss")
    if not all(math.isfinite(v) for v in ex.values()):
        fail(f"non-finite loss in the equivalence limit: {ex}")

    # The data order goes on at step 0: frozen weights (the lr far below a float's resolution), so
    # each step's loss is a function of its windows alone; the dense run continues to step 30.
    _, text = run([ckpt, "convert", dense20, "--to", "uoe", "--out", j("cont"), "--attn-experts", "2",
                   "--experts", "4", "--attn-topk", "2", "--topk", "4", "--capacity-factor", "0", "--gate", "sum"])
    if not re.search(r"data order continued: train\.ini says --data-offset 20\b", text):
        fail(f"convert did not say the data order continues at the source's step 20:\n{text}")
    ini = {k.strip(): v.strip() for k, v in (ln.split("=", 1) for ln in open(j("cont", "train.ini"))
                                             if "=" in ln and not ln.startswith("#"))}
    if ini.get("data-offset") != "20":
        fail(f"{j('cont', 'train.ini')} has data-offset = {ini.get('data-offset')!r}, expected 20")
    frozen = ["--lr", "1e-30", "--min-lr", "0", "--warmup", "0"]
    run([train, "--config", j("cont", "train.ini"), *logs, *frozen, "--steps", "10", "--metrics", j("cont.jsonl")])
    run([train, *args, *logs, *frozen, "--block-type", "dense", "--steps", "30", "--resume", dense20,
         "--checkpoint-dir", j("dense_frozen"), "--metrics", j("dense_frozen.jsonl")])
    co, dn = losses(j("cont.jsonl")), losses(j("dense_frozen.jsonl"))
    if sorted(co) != list(range(1, 11)) or sorted(dn) != list(range(21, 31)):
        fail(f"frozen runs logged steps {sorted(co)} and {sorted(dn)}, expected 1..10 and 21..30")
    worst = max(abs(co[k] - dn[20 + k]) / abs(dn[20 + k]) for k in co)
    print(f"data order continued: converted steps 1..10 vs dense steps 21..30 (weights frozen), largest relative "
          f"loss difference {worst:.2e}; converted {[round(co[k], 4) for k in sorted(co)]}")
    if worst > 1e-5:
        fail(f"the converted run's windows are not the dense run's next ones: losses {co} vs {dn}")

    # UoE trained 10 steps → dense → UoE: experts bitwise, routers a fresh initialisation.
    up10 = j("up", "step_00000010")
    run([ckpt, "convert", up10, "--to", "dense", "--out", j("up_dense")])
    run([ckpt, "convert", j("up_dense"), "--to", "uoe", "--out", j("up_again"), "--attn-experts", "2",
         "--experts", "4"])
    trained, again, fresh = tensors(up10), tensors(j("up_again", "step_00000000")), tensors(up0)
    if trained.keys() != again.keys():
        fail(f"tensors differ: {sorted(set(trained) ^ set(again))}")
    routers = [n for n in trained if ".router." in n]
    if len(routers) != 8:
        fail(f"expected 8 router tensors, found {routers}")
    for n in trained:
        if n in routers:
            if again[n] != fresh[n]:
                fail(f"{n} is not a fresh run's initialisation")
            if n.endswith("weight") and again[n] == trained[n]:
                fail(f"{n} kept its trained value")
        elif again[n] != trained[n]:
            fail(f"uoe → dense → uoe changed {n}")
    print(f"uoe → dense → uoe: {len(trained) - len(routers)} tensors bitwise identical, {len(routers)} router "
          f"tensors re-initialised")

    # Bad input: refused, nothing written.
    garbage = j("garbage")
    os.makedirs(garbage)
    with open(os.path.join(garbage, "manifest.h5"), "w") as f:
        f.write("not an HDF5 file\n")
    os.makedirs(j("empty"))
    never = j("never")
    refused([ckpt, "convert", j("empty"), "--to", "uoe", "--out", never, "--attn-experts", "2", "--experts", "4"],
            r"is not a checkpoint", never)
    refused([ckpt, "convert", j("nonexistent"), "--to", "dense", "--out", never], r"nonexistent.*not a checkpoint",
            never)
    refused([ckpt, "convert", garbage, "--to", "dense", "--out", never], r"garbage/manifest\.h5", never)
    refused([ckpt, "convert", dense20, "--to", "uoe", "--out", never, "--attn-experts", "3", "--experts", "4"],
            r"--attn-experts 3 does not divide the checkpoint's 4 heads", never)
    refused([ckpt, "convert", dense20, "--to", "uoe", "--out", never, "--attn-experts", "2", "--experts", "5"],
            r"--experts 5 does not divide the checkpoint's d-ff", never)
    refused([ckpt, "convert", dense20, "--to", "uoe", "--out", never, "--attn-experts", "2", "--experts", "2",
             "--topk", "3"], r"--topk 3 exceeds --experts 2", never)
    refused([ckpt, "convert", dense20, "--to", "uoe", "--out", never, "--experts", "4"],
            r"--to uoe needs the expert counts", never, code=2)
    refused([ckpt, "convert", dense20, "--to", "uoe", "--out", j("back"), "--attn-experts", "2", "--experts", "4"],
            r"exists and is not an empty directory", j("back"))
    if os.path.exists(never):
        fail(f"{never} was created by a refused conversion")
    print("ok")


if __name__ == "__main__":
    main()
