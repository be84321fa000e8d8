"""What the tests/cli checks share: fail() (print FAIL, exit 1) and run() (a command's exit code and
output). A check imports them with

    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    from check_helpers import fail, run  # noqa: E402
"""
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
