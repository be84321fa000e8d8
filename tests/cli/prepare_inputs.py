#!/usr/bin/env python3
"""uoe-prepare's inputs and threads (launcher/uoe_prepare_main.cpp, Inputs and Threads).

usage: prepare_inputs.py OUTDIR TEXT UOE_PREPARE

Checks that
- the files written are byte-identical for --threads 1, 2 and 3, byte, word and sentencepiece
  (an existing model), on TEXT, whose nominal 2- and 3-thread cut points fall inside a line, and on
  several files given at once;
- several files, a directory (recursive, sorted by path) and --inputs-from give the files a
  preparation of the same texts joined into one file gives ("\\n" put between files that lack one);
- --progress draws the progress line on stderr, and without it (stderr not a terminal) there is
  none; the summary line with MB/s is always on stdout;
- a missing file in a list, an empty directory, a file given twice, an empty list and a binary file
  are refused naming the file (and the list's line), leaving no output behind.
"""
import os
import shutil
import sys


sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from check_helpers import fail, must, run_split as run, same_outputs as same  # noqa: E402


def refused(cmd, needles, outdir, what):
    rc, out, err = run(cmd)
    text = out + err
    if rc == 0 or rc > 128:
        fail(f"{what}: exit {rc} (expected a refusal)\n{text}")
    for n in needles:
        if n not in text:
            fail(f"{what}: the message does not name {n!r}:\n{text}")
    if os.path.isdir(outdir) and os.listdir(outdir):
        fail(f"{what}: left {os.listdir(outdir)} behind")


def main():
    out, text_path, prepare = sys.argv[1], sys.argv[2], sys.argv[3]
    shutil.rmtree(out, ignore_errors=True)
    os.makedirs(out)
    text = open(text_path, "rb").read()
    # The cut points 1 and 2 threads put at size/2 and size/3 (and 2·size/3) are inside lines, so
    # the test proves the cuts move to line ends.
    for k in (2, 3):
        for i in range(1, k):
            c = len(text) * i // k
            if text[c - 1:c] == b"\n" or text[c:c + 1] == b"\n":
                fail(f"cut {c} of {k} threads is at a line end; the test would not cut a line")

    # Several files: TEXT in three parts, cut inside lines, the middle one ending without "\n".
    parts = os.path.join(out, "parts")
    os.makedirs(os.path.join(parts, "b"))
    a, b, c = len(text) // 5, 3 * len(text) // 5, len(text)
    chunks = [text[:a], text[a:b].rstrip(b"\n"), text[b:c]]
    names = [os.path.join(parts, "a.txt"), os.path.join(parts, "b", "x.txt"), os.path.join(parts, "c.txt")]
    for n, t in zip(names, chunks):
        open(n, "wb").write(t)
    joined = os.path.join(out, "joined.txt")
    body = b""
    for t in chunks:
        if body and not body.endswith(b"\n"):
            body += b"\n"
        body += t
    open(joined, "wb").write(body)

    model = os.path.join(out, "spm", "ts")
    must([prepare, "--data", text_path, "--tokenizer", "sentencepiece", "--vocab-size", "400", "--output", model],
         "uoe-prepare (a model for the sentencepiece runs)")
    kinds = {"byte": [], "word": ["--tokenizer", "word"], "sp": ["--tokenizer-model", model + ".model"]}
    for name, tok in kinds.items():
        for inputs, label in (([text_path], "text"), (names, "parts")):
            first = None
            for th in (1, 2, 3):
                prefix = os.path.join(out, f"{name}-{label}-t{th}", "ts")
                o, _ = must([prepare, "--data", *inputs, *tok, "--threads", str(th), "--output", prefix],
                            f"uoe-prepare {name} {label} --threads {th}")
                if f"on {th} thread" not in o or "MB/s" not in o:
                    fail(f"no summary line with MB/s and {th} threads:\n{o}")
                if first is None:
                    first = prefix
                else:
                    same(first, prefix, f"{name}, {label}, --threads 1 vs {th}")
        # The files given one by one, as a directory (sorted: a.txt, b/x.txt, c.txt), and as a list
        # prepare what the joined text prepares.
        lst = os.path.join(out, "list.txt")
        open(lst, "w").write("\n" + "\n".join(names) + "\n\n")
        ref = os.path.join(out, f"{name}-joined", "ts")
        must([prepare, "--data", joined, *tok, "--output", ref], f"uoe-prepare {name} joined")
        same(ref, os.path.join(out, f"{name}-parts-t1", "ts"), f"{name}: three files vs their joined text")
        for args, label in (([ "--data", parts], "dir"), (["--inputs-from", lst], "list")):
            prefix = os.path.join(out, f"{name}-{label}", "ts")
            must([prepare, *args, *tok, "--output", prefix], f"uoe-prepare {name} {label}")
            same(ref, prefix, f"{name}: {label} vs the joined text")

    # Progress: drawn with --progress, not drawn on a pipe without it.
    _, err = must([prepare, "--data", text_path, "--progress", "--output", os.path.join(out, "prog", "ts")], "--progress")
    if "tokenizing:" not in err or "MB/s" not in err:
        fail(f"--progress drew no progress line on stderr:\n{err}")
    _, err = must([prepare, "--data", text_path, "--output", os.path.join(out, "noprog", "ts")], "no --progress")
    if "tokenizing:" in err:
        fail(f"a progress line on a stderr that is not a terminal:\n{err}")

    # Bad input: named, nothing written.
    never = os.path.join(out, "never")
    bad_list = os.path.join(out, "bad_list.txt")
    open(bad_list, "w").write(names[0] + "\n" + os.path.join(parts, "missing.txt") + "\n")
    refused([prepare, "--inputs-from", bad_list, "--output", never + "/ts"], [bad_list, "line 2", "missing.txt"], never,
            "a missing file in --inputs-from")
    empty_dir = os.path.join(out, "empty_dir")
    os.makedirs(os.path.join(empty_dir, "sub"))
    refused([prepare, "--data", empty_dir, "--output", never + "/ts"], [empty_dir, "no regular file"], never,
            "an empty directory")
    refused([prepare, "--data", parts, names[1], "--output", never + "/ts"], [names[1], "twice"], never,
            "a file given twice")
    empty_list = os.path.join(out, "empty_list.txt")
    open(empty_list, "w").write("\n\n")
    refused([prepare, "--inputs-from", empty_list, "--output", never + "/ts"], [empty_list, "lists no path"], never,
            "an empty list")
    binary = os.path.join(parts, "zz.bin")
    open(binary, "wb").write(b"abc\0def\n")
    refused([prepare, "--data", parts, "--output", never + "/ts"], [binary, "binary"], never, "a binary file in a directory")
    print("PASS")


if __name__ == "__main__":
    main()
