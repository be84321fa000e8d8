#!/usr/bin/env python3
"""Multi-host checks of uoe-train over TCP between namespaced hosts (run under tests/multihost/with-hosts).

usage: multihost_test.py CHECK OUTDIR BUILD [uoe-train options...]

CHECK is one of
  killed    2 hosts × 1 rank, ep 2: once training is under way, rank 1's process on h2 is killed
            (SIGKILL, from outside, as a lost node); the job must end on h1 too, with a non-zero
            status and a message naming rank 1, within the collective watchdog's bound
            (--collective-timeout, runtime/watchdog.hpp) plus a grace for mpirun to report, and no
            uoe-train may remain on either host.
  resume    a checkpoint written by 2 hosts × 1 rank with ep 2 (preempted: UOE_FAULT=term:0:STEP)
            resumes (a) on one host with the same 2 ranks and ends bitwise where the uninterrupted
            2-host run ends (every train_loss after the checkpoint and the final val_loss), and (b) on
            4 ranks over 2 hosts (ep 2 × dp 2), bitwise like the same 4-rank resume on one host.
  threads   hosts with different slot counts (h1 2 ranks, h2 1): each rank's local rank, local size
            and default thread count (its share of the CPUs its affinity mask allows,
            runtime/cpu_affinity.hpp) as uoe-train's placement lines report them; and uoe-train under
            `taskset -c 0` runs 1 thread.
The hosts come from the environment with-hosts sets: UOE_HOSTS (the netns-hosts command) and
UOE_HOSTFILE. Expected values are computed here from the machine (its CPUs, the slots), never typed
in. Prints what it checked; exits 0 on success, 1 on a failure.
"""
import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import threading
import time

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
LAUNCH = os.path.join(ROOT, "launcher", "uoe-launch")


def fail(msg, log=None):
    print("FAIL:", msg)
    if log and os.path.exists(log):
        print(f"--- {log}:")
        print(open(log).read()[-6000:])
    sys.exit(1)


def hosts_cmd():
    h = os.environ.get("UOE_HOSTS")
    if not h:
        fail("UOE_HOSTS is not set: run under tests/multihost/with-hosts")
    return shlex.split(h)


def hostfile(out, name, lines):
    path = os.path.join(out, name)
    with open(path, "w") as f:
        f.write("".join(f"{h} slots={s}\n" for h, s in lines))
    return path


def launch(build, ranks, hf, args, ep=2, env_names=(), mpirun_args=""):
    """The uoe-launch command run on h1 for `ranks` ranks over hostfile hf."""
    extra = " ".join([f"-x {n}" for n in env_names] + ([mpirun_args] if mpirun_args else []))
    cmd = hosts_cmd() + ["run", LAUNCH, "-n", str(ranks), "--ep", str(ep), "--hostfile", hf, "--build", build]
    if extra:
        cmd += ["--launcher-args", extra]
    return cmd + ["--"] + args


def run(cmd, log, env=None, timeout=300):
    with open(log, "w") as f:
        try:
            return subprocess.call(cmd, stdout=f, stderr=subprocess.STDOUT, env=env, timeout=timeout)
        except subprocess.TimeoutExpired:
            return "timeout (hang?)"


def metrics(path):
    rows = [json.loads(line) for line in open(path)]
    train = {r["step"]: r["train_loss"] for r in rows if "train_loss" in r}
    final = [r["val_loss"] for r in rows if r.get("final")]
    return train, final


def ns_pids(host, pattern):
    """Processes inside host's namespace whose command line contains pattern."""
    out = subprocess.run(hosts_cmd() + ["on", str(host), "sh", "-c", "true"], capture_output=True)
    if out.returncode != 0:
        return []
    ns = None
    for line in subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout.splitlines():
        name = line.split()[0]
        if name.endswith(f"-h{host}") and name.startswith(ns_prefix()):
            ns = name
    if not ns:
        return []
    pids = subprocess.run(["ip", "netns", "pids", ns], capture_output=True, text=True).stdout.split()
    found = []
    for p in pids:
        try:
            cmdline = open(f"/proc/{p}/cmdline", "rb").read().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if pattern in cmdline:
            found.append(int(p))
    return found


def ns_prefix():
    # netns-hosts names its namespaces uoe<id>-…; the id comes from its --dir (UOE_HOSTS).
    h = hosts_cmd()
    d = os.path.realpath(h[h.index("--dir") + 1])
    ck = subprocess.run(["cksum"], input=d.encode(), capture_output=True).stdout.split()[0]
    return f"uoe{int(ck) % 100000:05d}-"


# ------------------------------------------------------------------------------------------------


def check_killed(out, build, args):
    m = re.search(r"--collective-timeout (\d+)", " ".join(args))
    if not m:
        fail("killed: give --collective-timeout SECONDS (the bound the job must end within)")
    bound = int(m.group(1)) + 10  # + mpirun noticing the lost daemon/rank and tearing down
    hf = hostfile(out, "hosts_1_1", [("h1", 1), ("h2", 1)])
    log = os.path.join(out, "killed.log")
    marker = os.path.join(out, "killed")  # in every rank's command line: finds them
    cmd = launch(build, 2, hf, args + ["--metrics", marker + ".jsonl"])
    with open(log, "w") as f:
        p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        lines = []
        started = threading.Event()

        def pump():
            for line in p.stdout:
                f.write(line)
                f.flush()
                lines.append(line)
                if re.match(r"step +\d+/", line):
                    started.set()

        t = threading.Thread(target=pump, daemon=True)
        t.start()
        if not started.wait(240):
            p.kill()
            fail("killed: training never logged a step", log)
        victims = ns_pids(2, marker)
        victims = [v for v in victims if open(f"/proc/{v}/comm").read().strip().startswith("uoe-train")]
        if len(victims) != 1:
            p.kill()
            fail(f"killed: expected one uoe-train on h2, found {victims}", log)
        killed_at = time.monotonic()
        os.kill(victims[0], signal.SIGKILL)
        try:
            rc = p.wait(timeout=bound + 60)
        except subprocess.TimeoutExpired:
            p.kill()
            fail(f"killed: the job still ran {bound + 60} s after rank 1 was killed on h2", log)
        took = time.monotonic() - killed_at
        t.join(5)
    text = "".join(lines)
    if rc == 0:
        fail("killed: the job exited 0 though rank 1 was killed", log)
    if took > bound:
        fail(f"killed: the job ended {took:.1f} s after the kill, beyond the bound of {bound} s", log)
    if not re.search(r"rank 1.*(signal 9|Killed)|(signal 9|Killed).*rank 1", text, re.S):
        fail("killed: no message naming rank 1 and its signal", log)
    left = ns_pids(1, marker) + ns_pids(2, marker)
    if left:
        fail(f"killed: processes of the job remain on the hosts: {left}", log)
    print(f"killed: rank 1 killed on h2; the job ended on h1 {took:.1f} s later (bound {bound} s), status {rc}, "
          "no rank left on either host")


def check_resume(out, build, args):
    term_step = 7
    hf11 = hostfile(out, "hosts_1_1", [("h1", 1), ("h2", 1)])
    hf2 = hostfile(out, "hosts_2", [("h1", 2)])
    hf22 = hostfile(out, "hosts_2_2", [("h1", 2), ("h2", 2)])
    hf4 = hostfile(out, "hosts_4", [("h1", 4)])
    d = lambda n: os.path.join(out, n)  # noqa: E731
    for name in ("ref_ckpt", "ckpt", "one_host", "four_hosts", "four_one_host"):
        shutil.rmtree(d(name), ignore_errors=True)

    # The uninterrupted 2-host run, and the same run preempted after step term_step.
    ref = launch(build, 2, hf11, args + ["--checkpoint-dir", d("ref_ckpt"), "--metrics", d("ref.jsonl")])
    if run(ref, d("ref.log")) != 0:
        fail("resume: the uninterrupted 2-host run failed", d("ref.log"))
    leg = launch(build, 2, hf11, args + ["--checkpoint-dir", d("ckpt"), "--metrics", d("leg.jsonl")],
                 env_names=("UOE_FAULT",))
    rc = run(leg, d("leg.log"), dict(os.environ, UOE_FAULT=f"term:0:{term_step}"))
    if rc != 0:
        fail(f"resume: the preempted 2-host run did not exit 0 after checkpointing (status {rc})", d("leg.log"))
    latest = open(os.path.join(d("ckpt"), "latest")).read().strip() if os.path.exists(
        os.path.join(d("ckpt"), "latest")) else ""
    if not latest:
        fail("resume: the preempted run committed no checkpoint", d("leg.log"))
    for name in ("one_host", "four_hosts", "four_one_host"):
        shutil.copytree(d("ckpt"), d(name), symlinks=True)

    ref_train, ref_final = metrics(d("ref.jsonl"))

    def resumed(name, ranks, hf, what):
        cmd = launch(build, ranks, hf, args + ["--checkpoint-dir", d(name), "--resume", "auto",
                                               "--metrics", d(name + ".jsonl")])
        if run(cmd, d(name + ".log")) != 0:
            fail(f"resume: {what} failed", d(name + ".log"))
        if not re.search(r"resumed from \S*step_0*(\d+)", open(d(name + ".log")).read()):
            fail(f"resume: {what} did not resume from the checkpoint", d(name + ".log"))
        return metrics(d(name + ".jsonl"))

    # (a) One host, the same 2 ranks and ep: bitwise the uninterrupted 2-host run.
    train, final = resumed("one_host", 2, hf2, "the resume on one host (2 ranks)")
    steps = sorted(s for s in train if s > term_step)
    if not steps:
        fail("resume: the resumed run logged no step after the checkpoint", d("one_host.log"))
    for s in steps:
        if train[s] != ref_train.get(s):
            fail(f"resume: step {s}: train_loss {train[s]!r} on one host after the 2-host checkpoint, "
                 f"{ref_train.get(s)!r} uninterrupted on 2 hosts", d("one_host.log"))
    if final != ref_final or not final:
        fail(f"resume: final val_loss {final} on one host, {ref_final} uninterrupted on 2 hosts")
    print(f"resume: 2-host checkpoint ({latest}) resumed on one host: steps {steps[0]}-{steps[-1]} and the final "
          f"val_loss {final[0]!r} bitwise equal to the uninterrupted 2-host run")

    # (b) 4 ranks (ep 2 × dp 2) over 2 hosts: bitwise the same 4-rank resume on one host.
    t4h, f4h = resumed("four_hosts", 4, hf22, "the resume on 4 ranks over 2 hosts")
    t41, f41 = resumed("four_one_host", 4, hf4, "the resume on 4 ranks on one host")
    if not t4h or t4h != t41 or f4h != f41 or not f4h:
        fail(f"resume: 4 ranks over 2 hosts logged {t4h} / final {f4h}; on one host {t41} / final {f41}")
    print(f"resume: the same checkpoint resumed on 4 ranks over 2 hosts: {len(t4h)} train_loss values and the "
          f"final val_loss {f4h[0]!r} bitwise equal to 4 ranks on one host")


def placements(log):
    rows = {}
    for m in re.finditer(r"placement: rank (\d+) on (\S+): local rank (\d+) of (\d+), (\d+) CPUs, (\d+) threads",
                         open(log).read()):
        rows[int(m.group(1))] = (m.group(2), int(m.group(3)), int(m.group(4)), int(m.group(5)), int(m.group(6)))
    return rows


def check_threads(out, build, args):
    cpus = len(os.sched_getaffinity(0))
    slots = [("h1", 2), ("h2", 1)]
    hf = hostfile(out, "hosts_2_1", slots)
    log = os.path.join(out, "threads.log")
    # Unbound ranks (Open MPI would bind 3 ranks to sockets), so that the ranks of a host share its
    # CPUs; bound ranks are the taskset case below.
    if run(launch(build, 3, hf, args, ep=1, mpirun_args="--bind-to none"), log) != 0:
        fail("threads: the 3-rank run on hosts of 2 and 1 slots failed", log)
    got = placements(log)
    want = {}
    rank = 0
    for host, n in slots:
        for local in range(n):
            # The n ranks of a host share its CPUs: cpus // n threads each.
            want[rank] = (host, local, n, cpus, max(1, cpus // n))
            rank += 1
    if got != want:
        fail(f"threads: placements {got}, expected {want} (host, local rank, local size, CPUs, threads)", log)
    print("threads: 3 ranks on hosts of 2 and 1 slots: " +
          "; ".join(f"rank {r} on {v[0]} local {v[1]}/{v[2]}, {v[4]} threads of {v[3]} CPUs" for r, v in got.items()))

    # taskset: one CPU in the mask, one thread, whatever the machine has.
    train = os.path.join(build, "bin", "uoe-train")
    log1 = os.path.join(out, "taskset.log")
    first = sorted(os.sched_getaffinity(0))[0]
    if run(["taskset", "-c", str(first), train] + args, log1) != 0:
        fail("threads: uoe-train under taskset failed", log1)
    got1 = placements(log1)
    if got1.get(0, (None,) * 5)[3:] != (1, 1):
        fail(f"threads: under taskset -c {first}: {got1}, expected 1 CPU and 1 thread", log1)
    log2 = os.path.join(out, "no_taskset.log")
    if run([train] + args, log2) != 0:
        fail("threads: uoe-train failed", log2)
    got2 = placements(log2)
    if got2.get(0, (None,) * 5)[3:] != (cpus, cpus):
        fail(f"threads: without taskset: {got2}, expected {cpus} CPUs and {cpus} threads", log2)
    print(f"threads: taskset -c {first}: 1 thread; unrestricted: {cpus} threads ({cpus} CPUs in the mask)")


def main():
    if len(sys.argv) < 4:
        print(__doc__)
        sys.exit(2)
    check, out, build, args = sys.argv[1], sys.argv[2], os.path.abspath(sys.argv[3]), sys.argv[4:]
    # A fresh folder: uoe-train appends to an existing --metrics file, and a previous run's would count.
    shutil.rmtree(out, ignore_errors=True)
    os.makedirs(out)
    checks = {"killed": check_killed, "resume": check_resume, "threads": check_threads}
    if check not in checks:
        print(f"multihost_test.py: unknown check '{check}' (expected {', '.join(checks)})")
        sys.exit(2)
    checks[check](out, build, args)


if __name__ == "__main__":
    main()
