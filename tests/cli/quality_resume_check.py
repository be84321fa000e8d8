#!/usr/bin/env python3
"""bench/quality --resume: a study interrupted part-way continues with the runs it had finished.

usage: quality_resume_check.py OUTDIR BUILD

A small study (dense, uoe and the upcycled row; budget 2; seeds 1, 2; --quick sizes) runs to the end.
Then it is put back in the state an interruption during seed 2's uoe run leaves: that run's CSV gone
and its metrics half-written, the upcycled run of seed 2 never made, the tables not written (the dense
run of seed 2 finished, but the upcycled run deletes the checkpoint it starts from, so it is gone as
well). `--resume` must
- keep the runs that finished (their per-run CSVs untouched) and run the others: uoe and upcycled
  of seed 2, and dense of seed 2 again, since the checkpoint the upcycled run starts from is missing;
- give every re-run the val_loss the uninterrupted study had, bitwise (same config, same run);
- write quality.csv with every run, and tables that pass tests/cli/quality_check.py;
- refuse, exit 2 and touch nothing, when the command line describes another study (--budgets 4), or
  when OUTDIR holds no study;
- with --report: refuse (exit 2, nothing touched) while no budget has every run finished; once the
  study is complete, train nothing and write its tables into OUTDIR/report (passing quality_check.py,
  labelled as a report), leaving the runs and OUTDIR's own tables as they were.
"""
import csv
import os
import shutil
import subprocess
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from check_helpers import fail, run  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def val_losses(path):
    with open(path, newline="") as f:
        return {(r["model"], r["budget"], r["seed"]): r["val_loss"] for r in csv.DictReader(f)}


def snapshot(run_dir):
    """{file: (bytes, mtime)} of the per-run CSVs."""
    out = {}
    for name in sorted(os.listdir(run_dir)):
        if name.endswith(".csv"):
            p = os.path.join(run_dir, name)
            out[name] = (open(p, "rb").read(), os.stat(p).st_mtime_ns)
    return out


def main():
    if len(sys.argv) != 3:
        print(__doc__)
        sys.exit(2)
    out, build = sys.argv[1], sys.argv[2]
    shutil.rmtree(out, ignore_errors=True)
    runs = os.path.join(out, "runs")
    study = [os.path.join(ROOT, "bench", "quality"), "--quick", "--seeds", "2", "--budgets", "2",
             "--models", "dense,uoe,upcycled", "--build", build, "--out", out]
    run(study, timeout=1500)
    full = val_losses(os.path.join(out, "quality.csv"))
    if len(full) != 6:
        fail(f"the uninterrupted study wrote {len(full)} runs, expected 6: {sorted(full)}")

    # The state an interruption during seed 2's uoe run leaves.
    for name in ("uoe.b2.s2.csv", "upcycled.b2.s2.csv", "upcycled.b2.s2.jsonl", "upcycled.b2.s2.log"):
        os.remove(os.path.join(runs, name))
    half = os.path.join(runs, "uoe.b2.s2.jsonl")
    with open(half, "r+") as f:
        f.truncate(len(f.readline()) // 2)
    for name in ("quality.csv", "summary.csv", "paired.csv", "table.md"):
        os.remove(os.path.join(out, name))
    if os.path.exists(os.path.join(runs, "dense.b2.s2.ckpt")):
        fail("the dense run's checkpoint outlived the upcycled run that starts from it")
    before = snapshot(runs)

    # Another study's command line, or no study: refused, nothing touched.
    for extra, target, want in ((["--budgets", "4"], out, "budgets [2] in the stored study, [4] now"),
                                ([], os.path.join(out, "nothing-here"), "study.json not found")):
        cmd = study[:-1] + [target, "--resume"]
        if extra:
            i = cmd.index("--budgets")
            cmd[i + 1] = extra[1]
        rc, text = run(cmd, expect=None)
        if rc != 2 or want not in text:
            fail(f"exit {rc}, expected 2 with '{want}', from: {' '.join(cmd)}\n{text}")
        if snapshot(runs) != before or os.path.exists(os.path.join(out, "nothing-here", "runs")):
            fail(f"a refused --resume changed the study: {' '.join(cmd)}")
        print(f"refused as expected: {text.strip().splitlines()[-1]}")
    rc, text = run(study + ["--resume", "--report"], expect=None)
    if rc != 2 or "--report: no budget has every run finished yet (3 of 6 runs)" not in text:
        fail(f"--report on a study with no finished budget: exit {rc}, expected 2 naming it:\n{text}")
    if snapshot(runs) != before or os.path.exists(os.path.join(out, "report")):
        fail("a refused --report changed the study")

    _, text = run(study + ["--resume"], timeout=1500)
    print(text)
    if "--resume: 3 of 6 runs finished before and are kept; 3 to run" not in text:
        fail("--resume did not keep exactly the 3 finished runs whose work is still needed")
    if "dense budget 2 seed 2 finished, but its step-1 checkpoint" not in text:
        fail("--resume did not run dense seed 2 again for the upcycled run's missing checkpoint")
    after = snapshot(runs)
    for name in ("dense.b2.s1.csv", "uoe.b2.s1.csv", "upcycled.b2.s1.csv"):
        if after.get(name) != before[name]:
            fail(f"{name}: a finished run was run again or its CSV rewritten")
    for name in ("dense.b2.s2.csv", "uoe.b2.s2.csv", "upcycled.b2.s2.csv"):
        if name not in after or (name in before and after[name][1] == before[name][1]):
            fail(f"{name}: the run was not made again")
    resumed = val_losses(os.path.join(out, "quality.csv"))
    if resumed != full:
        fail(f"the resumed study's val_loss per run differs from the uninterrupted one's:\n{resumed}\n{full}")
    print(f"resumed: all {len(resumed)} runs' val_loss as in the uninterrupted study, bitwise")
    table = open(os.path.join(out, "table.md")).read()
    if "this invocation; the runs' own wall times sum to" not in table:
        fail("table.md of a resumed study does not say its wall time is this invocation's")
    rc = subprocess.call([sys.executable, os.path.join(os.path.dirname(os.path.abspath(__file__)),
                                                       "quality_check.py"), out, "2"])
    if rc != 0:
        fail("quality_check.py failed on the resumed study")

    # --report on the finished study: the same tables, into OUTDIR/report, nothing trained or touched.
    runs_before, table_before = snapshot(runs), open(os.path.join(out, "table.md")).read()
    _, text = run(study + ["--resume", "--report"], timeout=300)
    if "--report: all 6 runs finished; nothing is trained" not in text:
        fail(f"--report on the finished study did not say it trains nothing:\n{text}")
    if snapshot(runs) != runs_before or open(os.path.join(out, "table.md")).read() != table_before:
        fail("--report changed the study's runs or its own table.md")
    report = os.path.join(out, "report")
    if val_losses(os.path.join(report, "quality.csv")) != full:
        fail("--report's quality.csv differs from the study's runs")
    if "--report: all 6 runs finished" not in open(os.path.join(report, "table.md")).read():
        fail("--report's table.md is not labelled as a report")
    rc = subprocess.call([sys.executable, os.path.join(os.path.dirname(os.path.abspath(__file__)),
                                                       "quality_check.py"), report, "2"])
    if rc != 0:
        fail("quality_check.py failed on --report's output")
    print("ok")


if __name__ == "__main__":
    main()
