#!/usr/bin/env python3
"""uoe-sample end to end: a checkpoint written by a training run continues a prompt.

usage: sample_check.py OUTDIR UOE_SAMPLE TRAIN_CMD...

Runs TRAIN_CMD (which names `--data FILE`) on a copy of FILE, with `--checkpoint-dir OUTDIR/ck`
appended (any launcher and rank count: the sampler loads the checkpoint on one process, resharding
as needed), moves the copy away, then checks that uoe-sample
- needs no data: a byte-level model has no vocabulary, a word-level one finds its vocabulary in the
  checkpoint (/tokenizer in manifest.h5);
- word level, on a copy of the checkpoint without /tokenizer (as written before it was stored):
  refuses (exit 1, naming --data) until given the moved file, then draws the same text as with the
  stored vocabulary;
- continues the prompt (stdout starts with it) with text of the model's vocabulary, given either
  the checkpoint directory (its `latest`) or the step directory;
- draws the same text for the same seed, and other text for another seed (at temperature 1 an
  undertrained model's draws over 60 tokens all but never coincide);
- is greedy and repeatable at temperature 0;
- refuses a missing checkpoint (exit 1, naming it) and a bad option (exit 2), printing no text.
"""
import os
import shutil
import subprocess
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from check_helpers import fail  # noqa: E402


def sample(exe, *args):
    p = subprocess.run([exe, *args], capture_output=True, timeout=300)
    return p.returncode, p.stdout, p.stderr.decode(errors="replace")


def main():
    out, exe, train = sys.argv[1], sys.argv[2], sys.argv[3:]
    ck = os.path.join(out, "ck")
    subprocess.run(["rm", "-rf", ck])
    os.makedirs(out, exist_ok=True)
    # Train on a copy of --data that is moved away afterwards: a byte-level model needs no data to
    # sample, a word-level one must be given the file (its vocabulary is rebuilt from it).
    at = train.index("--data")
    here, moved = os.path.join(out, "train.txt"), os.path.join(out, "moved.txt")
    shutil.copyfile(train[at + 1], here)
    train = train[:at + 1] + [here] + train[at + 2:]
    word = "word" in train
    with open(os.path.join(out, "train.log"), "w") as log:
        if subprocess.call(train + ["--checkpoint-dir", ck], stdout=log, stderr=subprocess.STDOUT, timeout=600) != 0:
            fail("training failed:\n" + open(os.path.join(out, "train.log")).read())
    os.replace(here, moved)
    prompt = "ROMEO:"
    base = ["--prompt", prompt, "--tokens", "60", "--temperature", "1"]
    rc, a, err = sample(exe, "--checkpoint", ck, *base, "--seed", "3")
    if word:
        import h5py  # python3-h5py (launcher/install-deps)
        old = os.path.join(out, "old")
        subprocess.run(["rm", "-rf", old])
        step = open(os.path.join(ck, "latest")).read().strip()
        shutil.copytree(os.path.join(ck, step), old)
        with h5py.File(os.path.join(old, "manifest.h5"), "r+") as m:
            del m["tokenizer"]
        rc0, o, err0 = sample(exe, "--checkpoint", old, *base, "--seed", "3")
        if rc0 != 1 or o or "--data" not in err0:
            fail(f"a word-level model without a stored vocabulary whose data moved: exit {rc0}, stdout {o!r}, "
                 f"stderr {err0!r}")
        rc0, o, err0 = sample(exe, "--checkpoint", old, *base, "--seed", "3", "--data", moved)
        if rc0 != 0 or o != a:
            fail(f"the vocabulary rebuilt from --data draws other text than the stored one (exit {rc0}):\n"
                 f"{o!r}\n{a!r}\n{err0}")
    if rc != 0:
        fail(f"uoe-sample exited {rc}:\n{err}")
    text = a.decode("utf-8", errors="replace")
    if not text.startswith(prompt) or len(text) <= len(prompt) + 1:
        fail(f"the output does not continue the prompt: {text!r}")
    step = os.path.join(ck, open(os.path.join(ck, "latest")).read().strip())
    rc, b, err = sample(exe, "--checkpoint", step, *base, "--seed", "3")
    if rc != 0 or b != a:
        fail(f"the same seed on the step directory drew other text (exit {rc}):\n{a!r}\n{b!r}\n{err}")
    rc, c, err = sample(exe, "--checkpoint", ck, *base, "--seed", "4")
    if rc != 0 or c == a:
        fail(f"another seed drew the same text (exit {rc}): {c!r}\n{err}")
    greedy = ["--checkpoint", ck, "--prompt", prompt, "--tokens", "30", "--temperature", "0"]
    rc1, g1, _ = sample(exe, *greedy, "--seed", "1")
    rc2, g2, _ = sample(exe, *greedy, "--seed", "2")
    if rc1 != 0 or rc2 != 0 or g1 != g2 or not g1:
        fail(f"greedy sampling depends on the seed: {g1!r} vs {g2!r}")
    rc, o, err = sample(exe, "--checkpoint", os.path.join(out, "nonexistent"))
    if rc != 1 or o or "nonexistent" not in err:
        fail(f"a missing checkpoint: exit {rc}, stdout {o!r}, stderr {err!r}")
    rc, o, err = sample(exe, "--checkpoint", ck, "--temperature", "-1")
    if rc != 2 or o or "--temperature" not in err:
        fail(f"a negative temperature: exit {rc}, stdout {o!r}, stderr {err!r}")
    print(f"PASS: {len(text)} characters from {step}; seeds and greedy behave; bad input refused")


if __name__ == "__main__":
    main()
