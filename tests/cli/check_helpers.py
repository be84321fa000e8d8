"""What the tests/cli checks share: fail() (print FAIL, exit 1), run() (a command's exit code and
output), run_split() (exit code, stdout and stderr apart), must() (run_split that fails unless the
command succeeds), metrics() (a --metrics file's train losses by step and final val losses) and
same_outputs() (two uoe-prepare output prefixes wrote the same files, byte for byte). A check imports them with

    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    from check_helpers import fail, run  # noqa: E402
"""
import filecmp
import json
import os
import subprocess
import sys


def fail(msg, log=None):
    """Prints FAIL: msg (and the file `log`, if given) and exits 1."""
    print("FAIL:", msg)
    if log:
        print(open(log, errors="replace").read())
    sys.exit(1)


def run(cmd, expect=0, timeout=600):
    """(exit code, stdout + stderr) of cmd; fails unless the exit code is `expect` (None: any)."""
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    out = p.stdout + p.stderr
    if expect is not None and p.returncode != expect:
        fail(f"exit {p.returncode} (expected {expect}) from: {' '.join(cmd)}\n{out}")
    return p.returncode, out


def run_split(cmd, timeout=600):
    """(exit code, stdout, stderr) of cmd, whatever the exit code."""
    p = subprocess.run(cmd, capture_output=True, timeout=timeout)
    return p.returncode, p.stdout.decode(errors="replace"), p.stderr.decode(errors="replace")


def must(cmd, what):
    """(stdout, stderr) of cmd; fails, naming `what`, unless it exits 0."""
    rc, out, err = run_split(cmd)
    if rc != 0:
        fail(f"{what}: exit {rc}\n{' '.join(cmd)}\n{out}\n{err}")
    return out, err


def metrics(path):
    """A --metrics file (JSON lines): {step: train_loss} and the final val_loss of each final line."""
    rows = [json.loads(line) for line in open(path)]
    train = {r["step"]: r["train_loss"] for r in rows if "train_loss" in r}
    final = [r["val_loss"] for r in rows if r.get("final")]
    return train, final


def prepared_files(prefix):
    """The files uoe-prepare wrote for output PREFIX (PREFIX.*), sorted."""
    d, stem = os.path.split(prefix)
    return sorted(f for f in os.listdir(d) if f.startswith(stem + "."))


def same_outputs(a, b, what):
    """Fails, naming `what`, unless prefixes a and b (in one folder or two) hold the same files, byte for byte."""
    fa, fb = prepared_files(a), prepared_files(b)
    if not fa or fa != fb:
        fail(f"{what}: {a} wrote {fa}, {b} wrote {fb}")
    for f in fa:
        if not filecmp.cmp(os.path.join(os.path.dirname(a), f), os.path.join(os.path.dirname(b), f), shallow=False):
            fail(f"{what}: {f} differs between {a} and {b}")
