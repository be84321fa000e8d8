#!/usr/bin/env python3
"""A rank's anonymous memory does not grow with the token dataset, and loading it is quick.

usage: data_memory.py OUTDIR GIGATOKENS -- MPIRUN... UOE_TRAIN [train options...]

Writes two byte-level token files (runtime/token_file.hpp) of valid ids (all zero: id 0), a small one
(1M tokens) and a sparse one of GIGATOKENS·10^9 tokens (uint16: 2 bytes each, no disk blocks: the
zeros are a hole), trains a few steps on each with the given command (2 ranks) and compares what
every rank reports at the end ("memory: RssAnon per rank (MiB): a, b; data loaded in Xs"):
RssAnon (heap and stacks, not the file-backed pages of the map) must not grow by more than
SLACK_MIB against the small file, where a copy of the ids would cost 4 bytes a token; loading the
data must take under a second. Prints both runs' figures.
"""
import os
import re
import subprocess
import sys

SLACK_MIB = 32
MAX_LOAD_S = 1.0


def token_file(path, tokens):
    header = b"UOETOK01" + (1).to_bytes(4, "little") + (2).to_bytes(2, "little") + (0).to_bytes(2, "little")
    header += (256).to_bytes(4, "little") + (0).to_bytes(4, "little") + tokens.to_bytes(8, "little")
    header += (0).to_bytes(8, "little")
    assert len(header) == 40
    with open(path, "wb") as f:
        f.write(header)
        f.truncate(40 + 2 * tokens)  # a hole of zeros: valid id 0 everywhere


def report(cmd, log):
    with open(log, "w") as out:
        rc = subprocess.call(cmd, stdout=out, stderr=subprocess.STDOUT, timeout=240)
    text = open(log).read()
    if rc != 0:
        sys.exit(f"FAIL: exit {rc} from {' '.join(cmd)}; log {log}:\n{text[-3000:]}")
    m = re.search(r"memory: RssAnon per rank \(MiB\): ([0-9, -]+); data loaded in ([0-9.]+)s", text)
    if not m:
        sys.exit(f"FAIL: no memory line in {log}:\n{text[-2000:]}")
    return [int(x) for x in m.group(1).split(",")], float(m.group(2))


def main():
    if len(sys.argv) < 5 or "--" not in sys.argv:
        sys.exit(__doc__)
    outdir, gigatokens = sys.argv[1], float(sys.argv[2])
    cmd = sys.argv[sys.argv.index("--") + 1:]
    os.makedirs(outdir, exist_ok=True)
    small, big = os.path.join(outdir, "small.tok"), os.path.join(outdir, "big.tok")
    big_tokens = int(gigatokens * 1e9)
    try:
        token_file(small, 1_000_000)
        token_file(big, big_tokens)
        rss_small, load_small = report(cmd + ["--data", small], os.path.join(outdir, "small.log"))
        rss_big, load_big = report(cmd + ["--data", big], os.path.join(outdir, "big.log"))
    finally:
        for p in (small, big):
            if os.path.exists(p):
                os.remove(p)
    print(f"small (1e6 tokens): RssAnon per rank {rss_small} MiB, data loaded in {load_small:.3f}s")
    print(f"big ({big_tokens:.3g} tokens, {2 * big_tokens / 1e9:.1f} GB file): RssAnon per rank {rss_big} MiB, "
          f"data loaded in {load_big:.3f}s")
    if len(rss_small) != len(rss_big) or len(rss_big) < 2:
        sys.exit(f"FAIL: expected one figure per rank (at least 2), got {rss_small} and {rss_big}")
    for r, (a, b) in enumerate(zip(rss_small, rss_big)):
        if a <= 0 or b <= 0:
            sys.exit(f"FAIL: rank {r} reported no RssAnon ({a}, {b})")
        if b - a > SLACK_MIB:
            sys.exit(f"FAIL: rank {r}'s RssAnon grew by {b - a} MiB with the dataset (a copy of the ids would be "
                     f"{4 * big_tokens / 2**20:.0f} MiB; allowed {SLACK_MIB})")
    if load_big > MAX_LOAD_S:
        sys.exit(f"FAIL: loading the {2 * big_tokens / 1e9:.1f} GB dataset took {load_big:.3f}s (limit {MAX_LOAD_S}s)")
    print("PASS")


if __name__ == "__main__":
    main()
