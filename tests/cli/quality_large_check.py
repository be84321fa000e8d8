#!/usr/bin/env python3
"""bench/quality --scale large on a corpus given as a folder of documents (the way data/fetch-shakespeare
lays out Shakespeare's complete works), as a smoke run: --quick, 2 seeds, dense and uoe.

usage: quality_large_check.py OUTDIR BUILD

Makes OUTDIR/docs/train/{a,b}.txt and OUTDIR/docs/val/c.txt from slices of data/tinyshakespeare.txt, and
checks that
- a folder without val/ is refused before anything runs, naming the folder that is missing;
- the study runs: uoe-prepare was given the training and validation folders and --eod file (one
  document per file), and wrote where the training documents start (corpus.train.docs); every training
  run drew its windows inside documents (--windows-within-documents in its command);
- the study's output passes tests/cli/quality_check.py (structure, statistics recomputed).
"""
import os
import shutil
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def fail(msg):
    print(f"FAIL: {msg}")
    sys.exit(1)


def main():
    if len(sys.argv) != 3:
        fail("usage: quality_large_check.py OUTDIR BUILD")
    out, build = sys.argv[1], sys.argv[2]
    shutil.rmtree(out, ignore_errors=True)
    text = open(os.path.join(ROOT, "data", "tinyshakespeare.txt"), "rb").read()
    docs = os.path.join(out, "docs")
    parts = {"train/a.txt": text[:400_000], "train/b.txt": text[400_000:900_000], "val/c.txt": text[-200_000:]}
    for name, body in parts.items():
        os.makedirs(os.path.dirname(os.path.join(docs, name)), exist_ok=True)
        with open(os.path.join(docs, name), "wb") as f:
            f.write(body)
    quality = [os.path.join(ROOT, "bench", "quality"), "--scale", "large", "--quick", "--seeds", "2",
               "--models", "dense,uoe", "--build", build]

    # A folder without its validation documents: refused, naming what is missing, before anything runs.
    bad = os.path.join(out, "no-val")
    os.makedirs(os.path.join(bad, "train"))
    shutil.copy(os.path.join(docs, "train", "a.txt"), os.path.join(bad, "train"))
    res = subprocess.run(quality + ["--data", bad, "--out", os.path.join(out, "bad-study")], capture_output=True,
                         text=True)
    if res.returncode == 0 or os.path.join(bad, "val") not in res.stderr:
        fail(f"a --data folder without val/ was not refused naming {os.path.join(bad, 'val')} "
             f"(exit {res.returncode}):\n{res.stderr}")
    if os.path.exists(os.path.join(out, "bad-study", "runs")):
        fail("the refused study started runs")

    study = os.path.join(out, "study")
    res = subprocess.run(quality + ["--data", docs, "--out", study], capture_output=True, text=True)
    if res.returncode != 0:
        fail(f"bench/quality --scale large on {docs} failed (exit {res.returncode}):\n{res.stdout[-3000:]}"
             f"{res.stderr[-3000:]}")
    prepare = open(os.path.join(study, "corpus", "corpus.prepare.log")).readline().split()
    for want in (["--data", os.path.join(docs, "train")], ["--val-data", os.path.join(docs, "val")], ["--eod", "file"]):
        if not any(prepare[i:i + 2] == want for i in range(len(prepare))):
            fail(f"uoe-prepare's command lacks {' '.join(want)}: {' '.join(prepare)}")
    if not os.path.isfile(os.path.join(study, "corpus", "corpus.train.docs")):
        fail("uoe-prepare wrote no corpus.train.docs (where the training documents start)")
    logs = [f for f in os.listdir(os.path.join(study, "runs")) if f.endswith(".log")]
    if len(logs) != 8:
        fail(f"{len(logs)} run logs in {study}/runs, expected 8 (2 models × 2 budgets × 2 seeds)")
    for name in logs:
        command = open(os.path.join(study, "runs", name)).readline().split()
        if "--windows-within-documents" not in command:
            fail(f"runs/{name}: trained without --windows-within-documents: {' '.join(command)}")
    res = subprocess.run([sys.executable, os.path.join(ROOT, "tests", "cli", "quality_check.py"), study, "2"])
    if res.returncode != 0:
        fail("tests/cli/quality_check.py failed on the large-scale study (above)")
    print(f"ok: the large scale on a folder of documents ({study})")


if __name__ == "__main__":
    main()
