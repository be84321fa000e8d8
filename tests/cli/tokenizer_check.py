#!/usr/bin/env python3
"""SentencePiece end to end: uoe-prepare trains a model, uoe-train trains on its token files, and
the checkpoint alone is enough to sample.

usage: tokenizer_check.py OUTDIR TEXT UOE_PREPARE UOE_SAMPLE TRAIN_CMD...

TRAIN_CMD is uoe-train with its model options (no --data). Checks that
- uoe-prepare --tokenizer sentencepiece --vocab-size N writes PREFIX.train.tok, PREFIX.val.tok and
  PREFIX.model, and --tokenizer-model PREFIX.model prepares the same text into byte-identical files;
- uoe-train trains on them (--tokenizer sentencepiece) and checkpoints;
- with the prepared files deleted, uoe-sample --checkpoint continues a prompt, the same text twice;
- another preparation's model beside the token files is refused, naming both files;
- resuming that checkpoint on data of another model of the same size is refused (vocabulary hash);
- a file that is not a model, and a missing --vocab-size, are refused, naming what is wrong, and
  leave no output behind.
"""
import filecmp
import glob
import os
import shutil
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from check_helpers import fail, must, run_split as run  # noqa: E402


def main():
    out, text, prepare, sample, train = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4], sys.argv[5:]
    shutil.rmtree(out, ignore_errors=True)
    os.makedirs(out)
    prep, other, again = (os.path.join(out, d) for d in ("prep", "other", "again"))
    spm = ["--tokenizer", "sentencepiece"]
    must([prepare, "--data", text, *spm, "--vocab-size", "400", "--output", prep + "/ts"], "uoe-prepare")
    files = [prep + "/ts.train.tok", prep + "/ts.val.tok", prep + "/ts.model"]
    for f in files:
        if not os.path.isfile(f):
            fail(f"uoe-prepare did not write {f}")
    # The same model given back: the same ids, the same files.
    must([prepare, "--data", text, "--tokenizer-model", files[2], "--output", again + "/ts"], "uoe-prepare --tokenizer-model")
    for f in files:
        if not filecmp.cmp(f, f.replace(prep, again), shallow=False):
            fail(f"--tokenizer-model with the model of {f} prepared other bytes")
    # Another model of the same size (trained on another split of the text).
    must([prepare, "--data", text, *spm, "--vocab-size", "400", "--val-fraction", "0.5", "--output", other + "/ts"],
         "uoe-prepare (other model)")
    if filecmp.cmp(files[2], other + "/ts.model", shallow=False):
        fail("two splits of the text trained the same model; the mismatch checks below would prove nothing")

    ck = os.path.join(out, "ck")
    data = ["--data", files[0], "--val-data", files[1], *spm]
    must(train + data + ["--checkpoint-dir", ck], "uoe-train on sentencepiece token files")
    shutil.rmtree(prep)
    shutil.rmtree(again)
    prompt = "ROMEO:"
    args = [sample, "--checkpoint", ck, "--prompt", prompt, "--tokens", "20", "--temperature", "1", "--seed", "5"]
    a, err = must(args, "uoe-sample with the prepared files deleted")
    if not a.startswith(prompt) or len(a) <= len(prompt) + 1 or "sentencepiece vocabulary of 400" not in err:
        fail(f"uoe-sample did not continue the prompt with the stored model: {a!r}\n{err}")
    b, _ = must(args, "uoe-sample again")
    if a != b:
        fail(f"the same seed drew other text: {a!r} vs {b!r}")

    # Another model beside the token files.
    must([prepare, "--data", text, *spm, "--vocab-size", "400", "--output", again + "/ts"], "uoe-prepare (again)")
    shutil.copyfile(other + "/ts.model", again + "/ts.model")
    rc, o, e = run(train + ["--data", again + "/ts.train.tok", "--val-data", again + "/ts.val.tok", *spm])
    if rc != 1 or again + "/ts.model" not in e + o or again + "/ts.train.tok" not in e + o:
        fail(f"a token file with another preparation's model: exit {rc}\n{o}\n{e}")
    # The checkpoint resumed on data of another model: refused by the vocabulary hash.
    rc, o, e = run(train + ["--data", other + "/ts.train.tok", "--val-data", other + "/ts.val.tok", *spm,
                            "--checkpoint-dir", ck, "--resume", "auto"])
    if rc == 0 or "another vocabulary" not in e + o:
        fail(f"resuming on data of another model: exit {rc}\n{o}\n{e}")

    # Bad input: no output written.
    bad = os.path.join(out, "bad.model")
    with open(bad, "w") as f:
        f.write("this is not a SentencePiece model\n")
    rc, o, e = run([prepare, "--data", text, "--tokenizer-model", bad, "--output", out + "/never/x"])
    if rc != 1 or bad not in e or glob.glob(out + "/never/*"):
        fail(f"a file that is not a model: exit {rc}, outputs {glob.glob(out + '/never/*')}\n{o}\n{e}")
    rc, o, e = run([prepare, "--data", text, *spm, "--output", out + "/never/x"])
    if rc != 2 or "--vocab-size" not in e or glob.glob(out + "/never/*"):
        fail(f"sentencepiece without --vocab-size: exit {rc}\n{o}\n{e}")
    print(f"PASS: sentencepiece prepared, trained, sampled from the checkpoint alone ({a!r}); mismatches refused")


if __name__ == "__main__":
    main()
