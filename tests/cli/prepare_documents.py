#!/usr/bin/env python3
"""uoe-train --windows-within-documents on data prepared with uoe-prepare --eod (runtime/data.hpp,
document_windows; runtime/token_file.hpp, Documents file).

usage: prepare_documents.py OUTDIR TEXT UOE_PREPARE [--mpirun PREFIX... --] TRAIN_CMD...

TRAIN_CMD is a small uoe-train command with --seq-len T and --micro-batches 2 (this script appends
--data, --steps, checkpoints and metrics). Checks that
- the start-up line counts the documents, those that hold a window of T + 1 tokens and the skipped
  ones (and their tokens) as this script counts them from the token file;
- a run resumed from its step-4 checkpoint ends bitwise where the uninterrupted run ends (every
  train_loss and the final val_loss), with the option on; with --mpirun, resumed on 2 ranks (--ep 2,
  --micro-batches 1: the same data-parallel slots) it ends where the 1-rank run ends, within 1e-4
  (the expert-parallel equivalence's tolerance: the windows are the same, the sums' order is not);
- the option changes the windows (the losses differ from the run without it);
- the option on text, and with a --seq-len no document holds, is refused with exit 2 or 1 naming it.
"""
import os
import re
import shutil
import struct
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from check_helpers import fail, must, run_split as run, metrics  # noqa: E402


def main():
    out, text, prepare = sys.argv[1], sys.argv[2], sys.argv[3]
    rest = sys.argv[4:]
    mpirun = []
    if rest and rest[0] == "--mpirun":
        end = rest.index("--")
        mpirun, rest = rest[1:end], rest[end + 1:]
    train = rest
    T = int(train[train.index("--seq-len") + 1])
    shutil.rmtree(out, ignore_errors=True)
    os.makedirs(out)
    prefix = os.path.join(out, "ts")
    must([prepare, "--data", text, "--eod", "blank-line", "--output", prefix], "uoe-prepare --eod blank-line")
    data = ["--data", prefix + ".train.idx", "--val-data", prefix + ".val.idx"]

    # The documents as the token file holds them: each ends with 256.
    raw = open(prefix + ".train.tok", "rb").read()
    n = struct.unpack_from("<Q", raw, 24)[0]
    ids = struct.unpack_from("<%dH" % n, raw, 40)
    starts = [0] + [i + 1 for i, t in enumerate(ids) if t == 256 and i + 1 < n]
    lengths = [b - a for a, b in zip(starts, starts[1:] + [n])]
    short = [x for x in lengths if x < T + 1]
    if not short or len(short) == len(lengths):
        fail(f"the text should have documents both shorter and longer than {T + 1} tokens")

    on = train + data + ["--windows-within-documents"]
    ref_ck = os.path.join(out, "ref_ck")
    o, e = must(on + ["--steps", "8", "--checkpoint-every", "4", "--checkpoint-dir", ref_ck,
                      "--metrics", os.path.join(out, "ref.jsonl")], "the uninterrupted run")
    want = (f"kept inside documents: {len(lengths) - len(short)} of {len(lengths)} documents hold a window of "
            f"{T} + 1 tokens, {sum(x - T for x in lengths if x > T)} windows; {len(short)} shorter documents "
            f"skipped ({sum(short)} tokens")
    if want not in o + e:
        fail(f"the start-up line does not say {want!r}:\n{o}{e}")
    step4 = os.path.join(ref_ck, "step_00000004")
    must(on + ["--steps", "8", "--resume", step4, "--checkpoint-dir", os.path.join(out, "res_ck"),
               "--metrics", os.path.join(out, "res.jsonl")], "the resumed run")
    ref, ref_final = metrics(os.path.join(out, "ref.jsonl"))
    res, res_final = metrics(os.path.join(out, "res.jsonl"))
    resumed = sorted(s for s in res if s > 4)
    if len(resumed) < 3 or any(res[s] != ref[s] for s in resumed) or res_final != ref_final or not ref_final:
        fail(f"the resumed run differs: {[(s, ref.get(s), res[s]) for s in resumed]}, final {ref_final} {res_final}")

    if mpirun:
        one = [a for a in on]
        mb = one.index("--micro-batches")
        one[mb + 1] = "1"
        must(mpirun + one + ["--ep", "2", "--steps", "8", "--resume", step4, "--checkpoint-dir",
                             os.path.join(out, "np2_ck"), "--metrics", os.path.join(out, "np2.jsonl")],
             "the run resumed on 2 ranks")
        np2, np2_final = metrics(os.path.join(out, "np2.jsonl"))
        for s in resumed:
            if abs(np2[s] - ref[s]) > 1e-4 * abs(ref[s]):
                fail(f"resumed on 2 ranks, step {s}: train_loss {np2[s]} where 1 rank logs {ref[s]}")

    must(train + data + ["--steps", "4", "--metrics", os.path.join(out, "off.jsonl")], "the run without the option")
    off, _ = metrics(os.path.join(out, "off.jsonl"))
    if all(off[s] == ref[s] for s in off):
        fail("--windows-within-documents did not change the windows drawn")

    long_windows = list(on)
    long_windows[long_windows.index("--seq-len") + 1] = str(max(lengths))  # max + 1 tokens: none fits
    for args, needle in ((train + ["--data", text, "--windows-within-documents", "--steps", "1"],
                          "--windows-within-documents needs prepared data"),
                         (long_windows + ["--steps", "1"], "--windows-within-documents: none of the")):
        rc, o, e = run(args)
        if rc == 0 or rc > 128 or needle not in o + e:
            fail(f"exit {rc}, expected a refusal naming {needle!r}:\n{o}{e}")
    print("PASS")


if __name__ == "__main__":
    main()
