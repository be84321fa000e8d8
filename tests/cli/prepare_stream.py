#!/usr/bin/env python3
"""uoe-prepare streams its input (runtime/text_stream.hpp; launcher/uoe_prepare_main.cpp, Memory).

usage: prepare_stream.py identity OUTDIR TEXT UOE_PREPARE
       prepare_stream.py memory OUTDIR UOE_PREPARE

identity: the files written are byte-identical with the default block on 1 and 2 threads and with
  a block of a few bytes (UOE_PREPARE_BLOCK_BYTES: a block of a line or two, long lines cut inside,
  documents spread over many blocks) on 2, for byte, word (--vocab-size, --min-count) and
  sentencepiece (a model given; and one trained here, on 1 thread, its model depending on the
  trainer's thread count), without --eod and with --eod file, blank-line and --eod-separator, on
  several files (one without a final "\n", CRLF lines, blank and separator lines, lines longer than
  a block) and with a --val-data text.
memory: uoe-prepare's peak resident memory (VmHWM, from wait4's ru_maxrss) preparing 200 MB of text
  (byte level, 2 threads) exceeds that of 20 MB by less than MEMORY_SLACK_MB and stays below
  MEMORY_CEILING_MB: it does not grow with the input (it levels off once the allocator has settled;
  holding the text and its ids, as uoe-prepare did, takes about 970 MB for 200 MB of text).
"""
import os
import shutil
import subprocess
import sys


sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from check_helpers import fail, must, same_outputs as same  # noqa: E402

MEMORY_SLACK_MB = 48
MEMORY_CEILING_MB = 160  # the 200 MB run: a few blocks, their ids and the buffers (89 MB measured)
TINY_BLOCK = "7"  # bytes: shorter than most lines


def prepare(cmd, prefix, block, what):
    env = dict(os.environ)
    env.pop("UOE_PREPARE_BLOCK_BYTES", None)
    if block:
        env["UOE_PREPARE_BLOCK_BYTES"] = block
    p = subprocess.run([*cmd, "--output", prefix], capture_output=True, env=env, timeout=300)
    if p.returncode != 0:
        fail(f"{what}: exit {p.returncode}\n{p.stdout.decode(errors='replace')}\n{p.stderr.decode(errors='replace')}")


def identity(out, text_path, uoe_prepare):
    text = open(text_path, "rb").read()[:48000]
    sep = b"<|endoftext|>"
    files = [
        text[:12000].rstrip(b"\n"),  # no final "\n": the next file starts with the joined one
        text[12000:24000].replace(b"\n\n", b"\n" + sep + b"\n", 10).replace(b"\n", b"\r\n", 60)
        + b"\n\n" + b"w" * 300 + b" and " + b"x" * 200 + b"\n",  # words longer than a block
        b"\n\n" + text[24000:36000] + b"\n" + sep,  # leading blank lines, a separator without "\n"
    ]
    names = []
    for i, t in enumerate(files):
        names.append(os.path.join(out, f"part{i}.txt"))
        open(names[-1], "wb").write(t)
    val = os.path.join(out, "val.txt")
    open(val, "wb").write(text[36000:48000])
    model = os.path.join(out, "model", "m")
    must([uoe_prepare, "--data", *names, "--tokenizer", "sentencepiece", "--vocab-size", "400", "--output", model],
         "uoe-prepare (the sentencepiece model)")
    tokenizers = {
        "byte": [],
        "word": ["--tokenizer", "word", "--vocab-size", "500", "--min-count", "2"],
        "sp-train": ["--tokenizer", "sentencepiece", "--vocab-size", "400"],
        "sp-model": ["--tokenizer-model", model + ".model"],
    }
    rules = {"none": [], "file": ["--eod", "file"], "blank": ["--eod", "blank-line"], "sep": ["--eod-separator", sep.decode()]}
    runs = 0
    for tk, targs in tokenizers.items():
        for rk, rargs in rules.items():
            if tk == "sp-train" and rk not in ("none", "blank"):
                continue  # training is the slow part; the model given covers the other rules
            for vk, vargs in (("frac", []), ("val", ["--val-data", val])):
                if vk == "val" and rk not in ("none", "sep"):
                    continue
                # A model trained here depends on the trainer's thread count (SentencePiece's own;
                # docs/cluster.md §3): compare its runs on one thread count.
                ref = None
                runs_of = ((("1", None), ("1", TINY_BLOCK)) if tk == "sp-train" else
                           (("1", None), ("2", None), ("2", TINY_BLOCK)))
                for threads, block in runs_of:
                    cmd = [uoe_prepare, "--data", *names, *targs, *rargs, *vargs, "--threads", threads,
                           "--shard-size", "0.01"]
                    prefix = os.path.join(out, f"{tk}-{rk}-{vk}-t{threads}-b{block or 'default'}", "p")
                    what = f"{tk}, {rk}, {vk}, --threads {threads}, block {block or 'default'}"
                    prepare(cmd, prefix, block, what)
                    runs += 1
                    if ref is None:
                        ref = prefix
                    else:
                        same(ref, prefix, what + " vs the default block on 1 thread")
    print(f"PASS: {runs} preparations byte-identical for any block size and thread count")


def peak_rss_mb(cmd, what):
    """Runs cmd; returns its peak resident memory (VmHWM) in MB."""
    p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    output = p.stdout.read()
    _, status, usage = os.wait4(p.pid, 0)
    p.returncode = os.waitstatus_to_exitcode(status)
    if p.returncode != 0:
        fail(f"{what}: exit {p.returncode}\n{output.decode(errors='replace')}")
    return usage.ru_maxrss / 1024.0  # KiB on Linux


def memory(out, uoe_prepare):
    # Text from a 1 MB block of numbered lines, written again and again (fast to generate).
    line = b"".join(b"line %06d of the generated corpus: words, numbers 12345 and punctuation.\n" % i
                    for i in range(13000))[:1 << 20]
    line = line[:line.rfind(b"\n") + 1]
    peaks = {}
    for mb in (20, 200):
        path = os.path.join(out, f"text{mb}.txt")
        with open(path, "wb") as f:
            for _ in range(mb * 1000000 // len(line)):
                f.write(line)
        prefix = os.path.join(out, f"prep{mb}", "p")
        peaks[mb] = peak_rss_mb([uoe_prepare, "--data", path, "--threads", "2", "--output", prefix],
                                f"uoe-prepare on {mb} MB")
        size = os.path.getsize(path)
        os.remove(path)
        shutil.rmtree(os.path.dirname(prefix))
        print(f"{size / 1e6:.0f} MB of text: uoe-prepare peak resident memory {peaks[mb]:.1f} MB")
    if peaks[200] - peaks[20] >= MEMORY_SLACK_MB:
        fail(f"peak memory grows with the input: {peaks[20]:.1f} MB for 20 MB of text, {peaks[200]:.1f} MB for 200 MB "
             f"(allowed: less than {MEMORY_SLACK_MB} MB more)")
    if peaks[200] >= MEMORY_CEILING_MB:
        fail(f"peak memory {peaks[200]:.1f} MB for 200 MB of text (allowed: less than {MEMORY_CEILING_MB} MB)")
    print(f"PASS: {peaks[200] - peaks[20]:+.1f} MB from 20 MB to 200 MB of text (bound {MEMORY_SLACK_MB} MB)")


def main():
    mode, out = sys.argv[1], sys.argv[2]
    shutil.rmtree(out, ignore_errors=True)
    os.makedirs(out)
    if mode == "identity":
        identity(out, sys.argv[3], sys.argv[4])
    elif mode == "memory":
        memory(out, sys.argv[3])
    else:
        fail(f"unknown mode {mode!r} (identity or memory)")
    shutil.rmtree(out, ignore_errors=True)


if __name__ == "__main__":
    main()
