#!/usr/bin/env python3
"""uoe-prepare --eod: the end-of-document token (launcher/uoe_prepare_main.cpp, runtime/token_file.hpp).

usage: prepare_eod.py OUTDIR TEXT UOE_PREPARE UOE_SAMPLE TRAIN_CMD...

Checks, against documents this script finds in the text itself, that
- byte level, --eod blank-line, --eod file and --eod-separator: the ids are each document's bytes followed by 256,
  V = 257, the header's eod field is 256 + 1, the index is version 3 with "eod 256" and a documents
  file holding each document's first token (0 and one after every 256); without
  --eod the header field is 0 and V = 256;
- word level: "<eod>" is the vocabulary's last word, its id follows every document, --vocab-size N
  gives V = N in all; sentencepiece (an existing model): the model's </s> id follows every document;
- the files are byte-identical for --threads 1 and 3;
- uoe-train trains on the byte-level files (V = 257) and uoe-sample loads the checkpoint alone;
- --eod with an unknown rule, two rules, and --eod file with a single file, are refused and write
  nothing.
"""
import os
import shutil
import struct
import sys


sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from check_helpers import fail, must, run_split as run  # noqa: E402


def read_tok(path):
    raw = open(path, "rb").read()
    if raw[:8] != b"UOETOK01":
        fail(f"{path}: no token file")
    dtype, _, vocab, eod1, n = struct.unpack_from("<HHIIQ", raw, 12)
    fmt = "<%d%s" % (n, "H" if dtype == 2 else "I")
    return vocab, eod1, list(struct.unpack_from(fmt, raw, 40))


def blank_line_docs(text):
    """Documents of one file under --eod blank-line: maximal runs of lines that are not empty."""
    docs, cur = [], b""
    for line in text.splitlines(keepends=True):
        if line in (b"\n", b"\r\n"):
            if cur:
                docs.append(cur)
            cur = b""
        else:
            cur += line
    if cur:
        docs.append(cur)
    return docs


def main():
    out, text_path, prepare, sample, train = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4], sys.argv[5:]
    shutil.rmtree(out, ignore_errors=True)
    os.makedirs(out)
    full = open(text_path, "rb").read()
    # A training and a validation text; the training one as three files for --eod file.
    train_text, val_text = full[:200000], full[200000:260000]
    tr, va = os.path.join(out, "train.txt"), os.path.join(out, "val.txt")
    open(tr, "wb").write(train_text)
    open(va, "wb").write(val_text)
    files = []
    for i, (a, b) in enumerate(((0, 50001), (50001, 120003), (120003, 200000))):  # cut inside lines
        f = os.path.join(out, f"part{i}.txt")
        open(f, "wb").write(train_text[a:b])
        files.append(f)

    # Byte level, blank-line rule.
    prefix = os.path.join(out, "byte", "ts")
    o, _ = must([prepare, "--data", tr, "--val-data", va, "--eod", "blank-line", "--output", prefix], "byte --eod blank-line")
    if "V=257" not in o:
        fail(f"byte level with --eod is not V=257:\n{o}")
    for path, text in ((prefix + ".train.tok", train_text), (prefix + ".val.tok", val_text)):
        vocab, eod1, ids = read_tok(path)
        want = []
        for d in blank_line_docs(text):
            want += list(d) + [256]
        if vocab != 257 or eod1 != 257 or ids != want:
            fail(f"{path}: V={vocab}, eod field {eod1}, {len(ids)} ids; expected V=257, 257 and the "
                 f"{len(want)} ids of the documents each followed by 256")
    idx = open(prefix + ".train.idx").read()
    if not idx.startswith("uoe-token-index 3\n") or "\neod 256\ndocuments " not in idx:
        fail(f"the index does not record the end-of-document token and the documents:\n{idx}")
    # The documents file: where each document starts (0, then after every 256 but the last token).
    _, _, ids = read_tok(prefix + ".train.tok")
    raw = open(prefix + ".train.docs", "rb").read()
    if raw[:8] != b"UOEDOC01":
        fail(f"{prefix}.train.docs: no documents file")
    count, n = struct.unpack_from("<QQ", raw, 8)
    starts = list(struct.unpack_from("<%dQ" % count, raw, 24))
    want = [0] + [i + 1 for i, t in enumerate(ids) if t == 256 and i + 1 < len(ids)]
    if n != len(ids) or starts != want or len(raw) != 24 + 8 * count or f"documents {count} " not in idx:
        fail(f"{prefix}.train.docs: {count} starts of {n} tokens; expected the {len(want)} starts after each eod")

    # Byte level, file rule: each file's bytes, then 256 (nothing between files).
    prefix = os.path.join(out, "byte_file", "ts")
    must([prepare, "--data", *files, "--val-data", va, "--eod", "file", "--output", prefix], "byte --eod file")
    _, _, ids = read_tok(prefix + ".train.tok")
    want = []
    for f in files:
        want += list(open(f, "rb").read()) + [256]
    if ids != want:
        fail("--eod file: the training ids are not each file's bytes followed by 256")
    _, _, ids = read_tok(prefix + ".val.tok")
    if ids != list(val_text) + [256]:
        fail("--eod file: the validation file is not one document followed by 256")

    # --eod-separator: documents between lines that are exactly the separator (dropped).
    sep = b"<|endoftext|>"
    lines = train_text.splitlines(keepends=True)
    sep_text = b"".join(l + (sep + b"\n" if i % 37 == 36 else b"") for i, l in enumerate(lines))
    sp_path = os.path.join(out, "sep.txt")
    open(sp_path, "wb").write(sep_text)
    prefix = os.path.join(out, "byte_sep", "ts")
    must([prepare, "--data", sp_path, "--val-data", va, "--eod-separator", sep.decode(), "--output", prefix],
         "byte --eod-separator")
    _, _, ids = read_tok(prefix + ".train.tok")
    want, cur = [], b""
    for l in sep_text.splitlines(keepends=True):
        if l.rstrip(b"\r\n") == sep:
            want += list(cur) + [256] if cur else []
            cur = b""
        else:
            cur += l
    want += list(cur) + [256] if cur else []
    if ids != want or ids.count(256) < 2:
        fail(f"--eod-separator: {len(ids)} ids with {ids.count(256)} eod; expected {len(want)} with {want.count(256)}")

    # Without --eod: V = 256, the header field 0.
    prefix = os.path.join(out, "plain", "ts")
    must([prepare, "--data", tr, "--val-data", va, "--output", prefix], "byte without --eod")
    vocab, eod1, ids = read_tok(prefix + ".train.tok")
    if vocab != 256 or eod1 != 0 or ids != list(train_text):
        fail(f"without --eod: V={vocab}, eod field {eod1} (expected 256, 0 and the bytes)")

    # Word and sentencepiece: the eod id follows every document.
    n_docs = len(blank_line_docs(train_text))
    # One model for both thread counts (the trained model itself depends on SentencePiece's threads).
    model = os.path.join(out, "spm", "ts")
    must([prepare, "--data", tr, "--val-data", va, "--tokenizer", "sentencepiece", "--vocab-size", "400",
          "--output", model], "a SentencePiece model")
    runs = {"word": ["--tokenizer", "word", "--vocab-size", "300"], "sp": ["--tokenizer-model", model + ".model"]}
    for name, args in runs.items():
        outs = []
        for th in ("1", "3"):
            prefix = os.path.join(out, f"{name}{th}", "ts")
            must([prepare, "--data", tr, "--val-data", va, "--eod", "blank-line", "--threads", th, *args,
                  "--output", prefix], f"{name} --eod blank-line --threads {th}")
            outs.append(prefix)
        for f in sorted(os.listdir(os.path.dirname(outs[0]))):
            a, b = (os.path.join(os.path.dirname(p), f) for p in outs)
            if open(a, "rb").read() != open(b, "rb").read():
                fail(f"{name} --eod: {f} differs between --threads 1 and 3")
        vocab, eod1, ids = read_tok(outs[0] + ".train.tok")
        if eod1 == 0 or ids.count(eod1 - 1) != n_docs or ids[-1] != eod1 - 1:
            fail(f"{name}: eod field {eod1}, {ids.count(eod1 - 1)} eod ids; expected one after each of {n_docs} documents")
        if name == "word":
            words = open(outs[0] + ".vocab").read().split("\n")[:-1]
            if vocab != 300 or len(words) != 300 or words[-1] != "<eod>" or eod1 - 1 != 299:
                fail(f"word: V={vocab}, {len(words)} words, last {words[-1]!r}, eod {eod1 - 1}; expected 300 with <eod> last")

    # Byte level with --eod trains, and its checkpoint alone samples (the eod travels with it).
    ck = os.path.join(out, "ck")
    data = ["--data", os.path.join(out, "byte", "ts.train.idx"), "--val-data", os.path.join(out, "byte", "ts.val.idx")]
    o, e = must(train + data + ["--checkpoint-dir", ck], "uoe-train on --eod byte files")
    if "V=257" not in o + e:
        fail(f"uoe-train did not train with V=257:\n{o}{e}")
    must([sample, "--checkpoint", ck, "--prompt", "ROMEO:", "--tokens", "20"], "uoe-sample of the --eod checkpoint")

    # Refusals, nothing written.
    never = os.path.join(out, "never")
    for args, needle in ((["--data", tr, "--eod", "page"], "--eod must be"),
                         (["--data", tr, "--eod", "blank-line", "--eod-separator", "x"], "give one"),
                         (["--data", tr, "--eod", "file"], "--eod file makes each input file a document")):
        rc, o, e = run([prepare, *args, "--output", never + "/ts"])
        if rc == 0 or rc > 128 or needle not in o + e:
            fail(f"{args}: exit {rc}, expected a refusal naming {needle!r}:\n{o}{e}")
        if os.path.exists(never):
            fail(f"{args}: left {never} behind")
    print("PASS")


if __name__ == "__main__":
    main()
