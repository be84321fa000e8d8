#!/usr/bin/env python3
"""A checkpoint that cannot be written ends the run cleanly on every rank, and loses nothing.

usage: disk_full.py [--case core|limit_one_rank|pinned_tmp|full_disk] OUTDIR CMD...

CMD is a 2-rank training command (mpirun ... -np 2 .../uoe-train OPTIONS) with --ep 2, --steps 16
and --checkpoint-every 4; this script appends --checkpoint-dir, --metrics and --resume. The faults
are injected from outside the ranks, each in its own run resumed from the last commit (a run
preempted at step 5). --case core (the default) runs those every machine can inject:

  limit, all ranks    a file-size limit (bash `ulimit -f`, inherited by uoe-train; it ignores
                      SIGXFSZ, so the write fails with EFBIG) between the two shards' sizes: rank 0's
                      shard of step 8 cannot be written, rank 1's can;
  not a directory     --checkpoint-dir under a regular file (root ignores permissions, ENOTDIR does
                      not): refused at start-up, before any training;
  final save          the limit again, on a run whose only save left is the final one (step 16);

the other cases one each, and each exits 77 (CTest: skipped, with the reason) before training when
the machine cannot inject its fault:

  limit_one_rank      the limit on rank 1 alone (needs the MPI's rank variable in its processes);
  pinned_tmp          a step_00000008.tmp holding an immutable file, which rank 0 cannot clear
                      before writing step 8 (needs chattr +i: CAP_LINUX_IMMUTABLE);
  full_disk           the checkpoint directory on a tmpfs with room for less than one more
                      checkpoint: ENOSPC (needs to mount a tmpfs: root, CAP_SYS_ADMIN).

(Under the limit Open MPI may warn that it could not size its shared-memory segment; it falls back
and the run goes on, so the warning is expected in those logs.)

Each must end with exit status != 0, no hang, an error line from every rank naming the file or
directory and the OS's reason, no step_*.tmp or new step_* left, and `latest` and every committed
checkpoint byte for byte as before. Finally (core) a plain --resume auto run finishes, and its losses, final
val_loss and final checkpoint (every tensor, moments, step, RNG and data state) equal an
uninterrupted run's, bitwise.
"""
import glob
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import checkpoint_equal  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from check_helpers import metrics  # noqa: E402

TIMEOUT = 120

# Runs the rest of its arguments under a file-size limit of $UOE_TEST_FSIZE_KB KiB, on every rank
# ($UOE_TEST_FSIZE_RANK = all) or on one (the rank from the MPI's environment; exit 97 if none).
LIMIT_WRAPPER = r'''
only=${UOE_TEST_FSIZE_RANK:-all}
if [ "$only" != all ]; then
  r=${OMPI_COMM_WORLD_RANK:-${PMI_RANK:-${PMIX_RANK:-}}}
  if [ -z "$r" ]; then echo "disk_full: no MPI rank variable in the environment" >&2; exit 97; fi
fi
if [ "$only" = all ] || [ "$only" = "$r" ]; then ulimit -f "$UOE_TEST_FSIZE_KB" || exit 98; fi
exec "$@"
'''


class Fail(Exception):
    pass


def run(cmd, log, env=None):
    with open(log, "w") as out:
        try:
            return subprocess.call(cmd, stdout=out, stderr=subprocess.STDOUT, timeout=TIMEOUT,
                                   env=dict(os.environ, **(env or {})))
        except subprocess.TimeoutExpired:
            raise Fail(f"{' '.join(cmd[:3])} ... did not end within {TIMEOUT} s (a hang); log {log}")


def tree_hashes(ckpt):
    """sha256 of every file under the checkpoint directory (committed steps and `latest`)."""
    out = {}
    for path in sorted(glob.glob(f"{ckpt}/**", recursive=True)):
        if os.path.isfile(path):
            with open(path, "rb") as f:
                out[os.path.relpath(path, ckpt)] = hashlib.sha256(f.read()).hexdigest()
    return out


def expect_clean_failure(name, rc, log, ckpt, before, patterns, before_training=False):
    """The run failed, every rank said why (each of `patterns` on each rank's error line), and the
    checkpoint directory is exactly as before, with nothing half-written left in it."""
    text = open(log).read()
    if rc == 0:
        raise Fail(f"{name}: the run exited 0; log {log}")
    for rank in (0, 1):
        lines = [l for l in text.splitlines() if l.startswith(f"error: [rank {rank}]")]
        if not lines:
            raise Fail(f"{name}: rank {rank} printed no error line; log {log}:\n{text}")
        for p in patterns:
            if not re.search(p, lines[0]):
                raise Fail(f"{name}: rank {rank}'s error does not match /{p}/:\n  {lines[0]}")
    if "Segmentation fault" in text or "exited on signal" in text:
        raise Fail(f"{name}: a rank died of a signal instead of exiting with the error; log {log}")
    if before_training and re.search(r"^step +\d+/", text, re.M):
        raise Fail(f"{name}: training started before the directory was found unusable; log {log}")
    leftovers = [p for p in os.listdir(ckpt) if p.endswith(".tmp") or p.endswith(".old")]
    if leftovers:
        raise Fail(f"{name}: left {leftovers} in {ckpt}")
    after = tree_hashes(ckpt)
    if after != before:
        changed = sorted(k for k in set(before) | set(after) if before.get(k) != after.get(k))
        raise Fail(f"{name}: the checkpoint directory changed: {changed[:8]}")
    print(f"ok: {name}: exit {rc}; rank 0 said: {[l for l in text.splitlines() if l.startswith('error: [rank 0]')][0]}")


CASES = ("core", "limit_one_rank", "pinned_tmp", "full_disk")


def skip(why):
    """A case this machine cannot run: CTest's SKIP_RETURN_CODE (77) reports it as skipped."""
    print(f"SKIPPED: {why}")
    sys.exit(77)


def probe(case, cmd, train_at, out):
    """Before any training: can this machine inject the case's fault? If not, skip."""
    if case == "limit_one_rank":
        # The limit goes on one rank through the MPI's rank variable, read by LIMIT_WRAPPER.
        show = 'echo "rank=${OMPI_COMM_WORLD_RANK:-${PMI_RANK:-${PMIX_RANK:-}}}"'
        got = subprocess.run(cmd[:train_at] + ["bash", "-c", show], capture_output=True, text=True, timeout=60).stdout
        if sorted(re.findall(r"^rank=(\d+)$", got, re.M)) != ["0", "1"]:
            skip(f"this MPI sets no rank variable in its processes (they printed {got.split()})")
    elif case == "pinned_tmp":
        f = f"{out}/probe-immutable"
        open(f, "w").write("x")
        if not shutil.which("chattr") or subprocess.call(["chattr", "+i", f], stdout=subprocess.DEVNULL,
                                                         stderr=subprocess.DEVNULL) != 0:
            skip("chattr +i is not permitted here (needs CAP_LINUX_IMMUTABLE and a file system with the flag)")
        subprocess.check_call(["chattr", "-i", f])
        os.remove(f)
    elif case == "full_disk":
        mnt = f"{out}/probe-tmpfs"
        os.makedirs(mnt)
        if os.geteuid() != 0 or not shutil.which("mount") or \
                subprocess.call(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", mnt],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL) != 0:
            skip("cannot mount a tmpfs here (needs root and CAP_SYS_ADMIN)")
        subprocess.check_call(["umount", mnt])
        os.rmdir(mnt)


def main():
    args = sys.argv[1:]
    case = "core"
    if args[:1] == ["--case"]:
        case, args = args[1], args[2:]
    if case not in CASES or len(args) < 2:
        sys.exit(f"usage: disk_full.py [--case {'|'.join(CASES)}] OUTDIR mpirun ... uoe-train OPTIONS")
    out, cmd = os.path.abspath(args[0]), args[1:]
    train_at = next((i for i, a in enumerate(cmd) if os.path.basename(a).startswith("uoe-train")), None)
    if train_at is None:
        sys.exit("usage: disk_full.py [--case CASE] OUTDIR mpirun ... uoe-train OPTIONS")
    mnt = f"{out}/tmpfs"
    for m in (mnt, f"{out}/probe-tmpfs"):
        if os.path.ismount(m):
            subprocess.call(["umount", m])
    shutil.rmtree(out, ignore_errors=True)
    os.makedirs(out)
    probe(case, cmd, train_at, out)
    ckpt, log = f"{out}/ckpt", lambda n: f"{out}/{n}.log"

    def leg(name, extra, env=None, limited=False, ckpt_dir=None):
        c = list(cmd)
        if limited:
            c[train_at:train_at] = ["bash", "-c", LIMIT_WRAPPER, "bash"]
        c += ["--checkpoint-dir", ckpt_dir or ckpt, "--metrics", f"{out}/run.jsonl"] + extra
        return run(c, log(name), env)

    # The reference: uninterrupted.
    if case == "core" and \
            run(cmd + ["--checkpoint-dir", f"{out}/ref_ckpt", "--metrics", f"{out}/ref.jsonl"], log("ref")) != 0:
        raise Fail(f"the uninterrupted run failed; log {log('ref')}")
    # Preempted at step 5: steps 4 and 5 committed.
    if leg("preempt", [], {"UOE_FAULT": "term:0:5"}) != 0 or open(f"{ckpt}/latest").read().strip() != "step_00000005":
        raise Fail(f"the preempted run did not commit step 5; log {log('preempt')}")
    shard0 = os.path.getsize(f"{ckpt}/step_00000005/shard_00000_of_00002.h5")
    shard1 = os.path.getsize(f"{ckpt}/step_00000005/shard_00001_of_00002.h5")
    if shard1 >= shard0 - 4096:
        raise Fail(f"shard sizes {shard0} and {shard1}: need rank 0's larger to put a limit between them")
    before = tree_hashes(ckpt)
    resume = ["--resume", "auto"]
    kb = (shard0 + shard1) // 2 // 1024

    if case == "limit_one_rank":
        # The limit on rank 1 only: rank 0 must report rank 1's reason.
        rc = leg("limit_rank1", resume, {"UOE_TEST_FSIZE_KB": str(shard1 // 2 // 1024), "UOE_TEST_FSIZE_RANK": "1"},
                 limited=True)
        expect_clean_failure("file-size limit on rank 1 only", rc, log("limit_rank1"), ckpt, before,
                             [r"checkpoint step 8 was not committed", r"shard_00001_of_00002\.h5", r"File too large"])
        return

    if case == "pinned_tmp":
        # A stale step_00000008.tmp that cannot be cleared (an immutable file in it): the save of
        # step 8 fails before writing anything.
        stale = f"{ckpt}/step_00000008.tmp"
        os.makedirs(stale)
        open(f"{stale}/pinned", "w").write("x")
        try:
            subprocess.check_call(["chattr", "+i", f"{stale}/pinned"])
            rc = leg("stale_pinned", resume)
            subprocess.check_call(["chattr", "-i", f"{stale}/pinned"])
            shutil.rmtree(stale)
            expect_clean_failure("a step_*.tmp that cannot be cleared", rc, log("stale_pinned"), ckpt, before,
                                 [r"checkpoint step 8 was not written", re.escape(stale), r"Operation not permitted"])
        finally:
            subprocess.call(["chattr", "-i", f"{stale}/pinned"], stderr=subprocess.DEVNULL)
            shutil.rmtree(stale, ignore_errors=True)
        return

    if case == "full_disk":
        # The checkpoint directory on a tmpfs with room for less than one more checkpoint: ENOSPC.
        os.makedirs(mnt)
        used = sum(os.path.getsize(f) for f in glob.glob(f"{ckpt}/**", recursive=True) if os.path.isfile(f))
        size_kb = (used + 64 * 1024) // 1024 + 64  # the files, 4 KiB pages of small ones, less than a shard more
        subprocess.check_call(["mount", "-t", "tmpfs", "-o", f"size={size_kb}k", "tmpfs", mnt])
        try:
            small = f"{mnt}/ckpt"
            shutil.copytree(ckpt, small)
            small_before = tree_hashes(small)
            rc = leg("full_disk", resume, ckpt_dir=small)
            expect_clean_failure("full disk (tmpfs)", rc, log("full_disk"), small, small_before,
                                 [r"checkpoint step 8 was not committed", r"No space left on device"])
        finally:
            subprocess.call(["umount", mnt])
        return

    # core. 1. A file-size limit on every rank, between the shards' sizes: rank 0 fails at step 8.
    rc = leg("limit_all", resume, {"UOE_TEST_FSIZE_KB": str(kb)}, limited=True)
    expect_clean_failure("file-size limit on every rank", rc, log("limit_all"), ckpt, before,
                         [r"checkpoint step 8 was not committed", r"step_00000008\.tmp/shard_00000_of_00002\.h5",
                          r"File too large", r"latest still names step_00000005"])

    # 2. A checkpoint directory that cannot exist (its parent is a regular file): refused at start-up.
    blocker = f"{out}/a-regular-file"
    open(blocker, "w").write("not a directory\n")
    rc = leg("not_a_directory", ["--resume", f"{ckpt}/step_00000005"], ckpt_dir=f"{blocker}/ckpt")
    expect_clean_failure("checkpoint directory under a regular file", rc, log("not_a_directory"), ckpt, before,
                         [re.escape(f"{blocker}/ckpt"), r"Not a directory"], before_training=True)

    # 3. The final save fails: first a preempted run to step 14 (commits 8, 12, 14), then the limit.
    if leg("preempt14", resume, {"UOE_FAULT": "term:0:14"}) != 0 or \
            open(f"{ckpt}/latest").read().strip() != "step_00000014":
        raise Fail(f"the run preempted at step 14 did not commit it; log {log('preempt14')}")
    before14 = tree_hashes(ckpt)
    rc = leg("limit_final", resume, {"UOE_TEST_FSIZE_KB": str(kb)}, limited=True)
    expect_clean_failure("file-size limit at the final save", rc, log("limit_final"), ckpt, before14,
                         [r"checkpoint step 16 was not committed", r"File too large",
                          r"latest still names step_00000014"])
    if any(json.loads(l).get("final") for l in open(f"{out}/run.jsonl")):
        raise Fail("a run whose final checkpoint failed wrote a final metrics line")

    # 4. Nothing was lost: a plain resume finishes where the uninterrupted run did, bitwise.
    if leg("resume", resume) != 0:
        raise Fail(f"the resumed run failed; log {log('resume')}")
    ref_train, ref_final = metrics(f"{out}/ref.jsonl")
    run_train, run_final = metrics(f"{out}/run.jsonl")
    if not ref_final or run_final[-1:] != ref_final:
        raise Fail(f"final val_loss {run_final[-1:]} after the faults, {ref_final} uninterrupted")
    for step, loss in run_train.items():  # later legs re-log steps after their checkpoint
        if ref_train.get(step) != loss:
            raise Fail(f"step {step}: train_loss {loss!r} after the faults, {ref_train.get(step)!r} uninterrupted")
    final = sorted(glob.glob(f"{ckpt}/step_*[0-9]"))[-1]
    diffs = checkpoint_equal.compare(final, sorted(glob.glob(f"{out}/ref_ckpt/step_*[0-9]"))[-1])
    if diffs:
        raise Fail(f"final checkpoint {final} differs from the uninterrupted run's: {diffs[:5]}")
    print(f"PASS: every fault ended cleanly on both ranks with the previous checkpoint intact; the resumed run "
          f"matches the uninterrupted one bitwise ({len(run_train)} logged steps, final val_loss {ref_final[0]!r}, "
          f"final checkpoint equal by {checkpoint_equal.method()})")


if __name__ == "__main__":
    try:
        main()
    except Fail as e:
        print("FAIL:", e)
        sys.exit(1)
