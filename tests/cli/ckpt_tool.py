#!/usr/bin/env python3
"""uoe-ckpt info and verify on a real checkpoint, intact and damaged.

usage: ckpt_tool.py OUTDIR UOE_CKPT --fixture CHECKPOINT_DIR
       ckpt_tool.py OUTDIR UOE_CKPT --train TRAIN_CMD...

The checkpoint directory (a run's --checkpoint-dir: `latest` and step_*) is either copied from
--fixture (never modified: every case works on a copy under OUTDIR) or written by TRAIN_CMD, run
with `--checkpoint-dir OUTDIR/source` appended (any launcher and rank count). What is expected is
read from the files themselves with h5py (Debian's python3-h5py, launcher/install-deps), never
written into this script. Checks:
- verify passes on the step directory, on the checkpoint directory (its `latest`), and with --all
  (every step ok; --resume auto would take the step `latest` names);
- info prints every tensor of every group; info --json parses and lists every dataset the shards
  hold, with its global shape and slabs as the shards' attributes say, and the manifest's fields;
- one byte flipped inside the stored data (the chunk h5py's get_chunk_info locates, never HDF5's
  slack) of a /model tensor, an /optim/m and an /optim/v tensor, /rng and /data_cursor: verify
  exits 1 naming the shard file, the dataset and the checksum, and that dataset only; two flips in
  two shards are both named (verify goes on past a problem); info still works (it reads no data);
- a truncated shard, a missing shard: exit 1 naming the file; an overlapping slab in the manifest's
  index, a shard's slab attribute that disagrees with the index, a second copy of a tensor in a shard
  the index does not give it: each named;
- --all with the newest step damaged: exit 1, and --resume auto's choice is the newest other step
  that verifies (or none);
- bad input (an empty directory, a missing one, a file, a manifest of a newer format version, a
  `latest` naming nothing): exit 1 with a message naming it; a bad command line: exit 2.
"""
import json
import os
import shutil
import subprocess
import sys

import h5py
import numpy

GROUPS = ("/model", "/optim/m", "/optim/v")
failures = []


def check(cond, what, output=""):
    print(("ok: " if cond else "FAIL: ") + what)
    if not cond:
        failures.append(what)
        if output:
            print("--- output ---\n" + output.rstrip() + "\n---")


def run(exe, *args):
    p = subprocess.run([exe, *args], capture_output=True, text=True, timeout=300)
    return p.returncode, p.stdout, p.stderr


def copy_case(source, out, name):
    dst = os.path.join(out, name)
    shutil.rmtree(dst, ignore_errors=True)
    shutil.copytree(source, dst)
    return dst


def latest_step(ckdir):
    with open(os.path.join(ckdir, "latest")) as f:
        return os.path.join(ckdir, f.read().strip())


def shard_files(step):
    with h5py.File(os.path.join(step, "manifest.h5"), "r") as m:
        return [s.decode() if isinstance(s, bytes) else str(s) for s in m.attrs["shard_files"]]


def datasets_of(step):
    """{(group, name): [(shard file, global_shape, slab_begin, slab_end)]} from the shards' own attributes."""
    out = {}
    for file in shard_files(step):
        with h5py.File(os.path.join(step, file), "r") as f:
            for g in GROUPS:
                for name, d in f[g].items():
                    out.setdefault((g, name), []).append(
                        (file, [int(x) for x in d.attrs["global_shape"]], int(d.attrs["slab_begin"]),
                         int(d.attrs["slab_end"])))
    return out


def flip_byte(path, dataset):
    """Flips one byte in the middle of the data of `dataset`'s first chunk (the stored chunk is its
    data, then the 4-byte Fletcher32 checksum)."""
    with h5py.File(path, "r") as f:
        d = f[dataset]
        info = d.id.get_chunk_info(0)
        data_bytes = int(numpy.prod(d.chunks)) * d.dtype.itemsize
        assert info.size == data_bytes + 4, (dataset, info, data_bytes)
        at = info.byte_offset + data_bytes // 2
    with open(path, "r+b") as f:
        f.seek(at)
        b = f.read(1)[0]
        f.seek(at)
        f.write(bytes([b ^ 0xFF]))


def problem_lines(out):
    return [l for l in out.splitlines() if l.lstrip().startswith("- ")]


def main():
    out, exe, mode = sys.argv[1], sys.argv[2], sys.argv[3]
    os.makedirs(out, exist_ok=True)
    source = os.path.join(out, "source")
    shutil.rmtree(source, ignore_errors=True)
    if mode == "--fixture":
        shutil.copytree(sys.argv[4], source)
    elif mode == "--train":
        with open(os.path.join(out, "train.log"), "w") as log:
            rc = subprocess.call(sys.argv[4:] + ["--checkpoint-dir", source], stdout=log, stderr=subprocess.STDOUT,
                                 timeout=600)
        if rc != 0:
            print("FAIL: training failed:\n" + open(os.path.join(out, "train.log")).read())
            return 1
    else:
        print(__doc__)
        return 2
    steps = sorted(e for e in os.listdir(source) if e.startswith("step_") and "." not in e)
    step = latest_step(source)
    shards = shard_files(step)
    expected = datasets_of(step)
    print(f"checkpoint {step}: {len(shards)} shards, {len(expected)} datasets in {', '.join(GROUPS)}; steps {steps}")
    check(len(shards) >= 2, "the checkpoint has at least 2 shards (a multi-rank ep checkpoint)")

    # --- intact ---
    for args in ([step], [source]):
        rc, o, e = run(exe, "verify", *args)
        check(rc == 0 and "ok" in o, f"verify {args[0]} passes", o + e)
    rc, o, e = run(exe, "verify", "--all", source)
    check(rc == 0 and o.count(": ok") == len(steps) and f"--resume auto would take {step}" in o,
          "verify --all: every step ok, --resume auto takes the one latest names", o + e)

    rc, o, e = run(exe, "info", step)
    missing = [f"{g}/{n}" for (g, n) in expected if n not in o]
    with h5py.File(os.path.join(step, "manifest.h5"), "r") as m:
        build = m.attrs["build"]
        build = build.decode() if isinstance(build, bytes) else str(build)
    check(rc == 0 and build in o, "info names the build that wrote the checkpoint", o + e)
    check(rc == 0 and not missing and all(g in o for g in GROUPS), f"info lists every tensor ({missing} missing)",
          o + e)
    rc, o, e = run(exe, "info", "--json", source)
    try:
        j = json.loads(o)
    except ValueError as err:
        j = None
        check(False, f"info --json parses ({err})", o + e)
    if j is not None:
        listed = {(t["group"], t["name"]): t for t in j["tensors"]}
        check(rc == 0 and set(listed) == set(expected),
              f"info --json lists every dataset of the shards ({len(listed)} listed, {len(expected)} stored)")
        wrong = []
        for key, slabs in expected.items():
            t = listed.get(key)
            if t is None:
                continue
            got = sorted((s["file"], s["rows"][0], s["rows"][1]) for s in t["slabs"])
            want = sorted((f, b, e) for (f, _, b, e) in slabs)
            if got != want or any(t["global_shape"] != gs for (_, gs, _, _) in slabs) or t["dtype"] != "float32":
                wrong.append(f"{key}: {t} vs {slabs}")
        check(not wrong, "info --json: global shapes, slabs and dtypes as the shards say" + "".join(
            "\n  " + w for w in wrong[:5]))
        with h5py.File(os.path.join(step, "manifest.h5"), "r") as m:
            attrs = {k: m.attrs[k] for k in ("format_version", "step", "world", "ep")}
            text = {k: m.attrs[k] for k in ("config_ini", "build")}
            text = {k: v.decode() if isinstance(v, bytes) else str(v) for k, v in text.items()}
        check(all(j[k] == int(v) for k, v in attrs.items()) and all(j[k] == v for k, v in text.items()) and
              j["checkpoint"] == step, f"info --json: manifest fields {attrs}, the build string and the stored options")

    # --- one flipped byte per kind of dataset ---
    def pick(group):
        # An expert slab of the last shard where the group has one, so that a shard other than 0 is hit.
        names = sorted(n for (g, n), sl in expected.items() if g == group and any(f == shards[-1] for f, *_ in sl))
        return shards[-1], f"{group}/{names[0]}"
    targets = [pick(g) for g in GROUPS] + [(shards[0], "/rng"), (shards[-1], "/data_cursor")]
    for file, dataset in targets:
        case = copy_case(source, out, "flip")
        s = latest_step(case)
        flip_byte(os.path.join(s, file), dataset)
        rc, o, e = run(exe, "verify", s)
        p = problem_lines(o)
        check(rc == 1 and len(p) == 1 and file in p[0] and dataset in p[0] and "checksum" in p[0],
              f"a byte flipped in {file} {dataset}: verify exits 1 naming the file and dataset, and only it", o + e)
        rc, o, e = run(exe, "info", s)
        check(rc == 0, f"info still reads the checkpoint with {dataset} damaged", o + e)
    case = copy_case(source, out, "flip_two")
    s = latest_step(case)
    (f1, d1), (f2, d2) = (shards[0], "/model/" + sorted(n for (g, n) in expected if g == "/model")[0]), targets[2]
    flip_byte(os.path.join(s, f1), d1)
    flip_byte(os.path.join(s, f2), d2)
    rc, o, e = run(exe, "verify", s)
    p = problem_lines(o)
    check(rc == 1 and len(p) == 2 and any(f1 in l and d1 in l for l in p) and any(f2 in l and d2 in l for l in p),
          f"two flipped bytes ({f1} {d1}, {f2} {d2}): both named", o + e)

    # --- damaged and missing shards ---
    case = copy_case(source, out, "truncated")
    s = latest_step(case)
    victim = os.path.join(s, shards[-1])
    os.truncate(victim, os.path.getsize(victim) // 2)
    rc, o, e = run(exe, "verify", s)
    check(rc == 1 and any(shards[-1] in l and "truncated" in l for l in problem_lines(o)),
          f"a truncated {shards[-1]}: named as truncated", o + e)
    case = copy_case(source, out, "missing")
    s = latest_step(case)
    os.remove(os.path.join(s, shards[-1]))
    rc, o, e = run(exe, "verify", s)
    p = problem_lines(o)
    check(rc == 1 and len(p) == 1 and shards[-1] in p[0] and "missing" in p[0],
          f"a missing {shards[-1]}: named as missing, the other shards verified", o + e)

    # --- coverage: each global element exactly once ---
    split = sorted(n for (g, n), sl in expected.items() if g == "/model" and len(sl) > 1)
    check(bool(split), "the checkpoint has a tensor split over shards")
    if split:
        name = split[0]
        case = copy_case(source, out, "overlap_index")
        s = latest_step(case)
        with h5py.File(os.path.join(s, "manifest.h5"), "r+") as m:
            rows = m["index/" + name][...]
            second = int(numpy.argmax(rows[:, 1]))  # the slab that does not start at row 0
            rows[second, 1] = 0
            m["index/" + name][...] = rows
        rc, o, e = run(exe, "verify", s)
        check(rc == 1 and any("manifest.h5" in l and name in l and "overlap" in l for l in problem_lines(o)),
              f"the manifest's index gives two shards row 0 of {name}: the overlap is named", o + e)
        case = copy_case(source, out, "overlap_attribute")
        s = latest_step(case)
        file = next(f for (f, _, b, _) in expected[("/optim/m", name)] if b > 0)
        with h5py.File(os.path.join(s, file), "r+") as f:
            f["optim/m/" + name].attrs.modify("slab_begin", numpy.int64(0))
        rc, o, e = run(exe, "verify", s)
        p = problem_lines(o)
        check(rc == 1 and len(p) == 1 and file in p[0] and f"/optim/m/{name}" in p[0] and "says it holds rows [0," in p[0],
              f"{file} /optim/m/{name} claims rows from 0: named against the manifest", o + e)
    replicated = sorted(n for (g, n), sl in expected.items() if g == "/model" and [f for f, *_ in sl] == [shards[0]])
    if replicated:
        case = copy_case(source, out, "second_copy")
        s = latest_step(case)
        with h5py.File(os.path.join(s, shards[0]), "r") as src, h5py.File(os.path.join(s, shards[-1]), "r+") as dst:
            src.copy(src["model/" + replicated[0]], dst["model"], name=replicated[0])
        rc, o, e = run(exe, "verify", s)
        p = problem_lines(o)
        check(rc == 1 and len(p) == 1 and shards[-1] in p[0] and f"/model/{replicated[0]}" in p[0],
              f"a second copy of /model/{replicated[0]} in {shards[-1]}: named", o + e)

    # --- --all with the newest step damaged ---
    case = copy_case(source, out, "all_damaged")
    s = latest_step(case)
    flip_byte(os.path.join(s, targets[0][0]), targets[0][1])
    rc, o, e = run(exe, "verify", "--all", case)
    older = [os.path.join(case, n) for n in steps if os.path.join(case, n) != s]
    want = f"--resume auto would take {older[-1]}" if older else "--resume auto would refuse to start"
    check(rc == 1 and f"{s}: 1 problem" in o and want in o,
          f"verify --all with {os.path.basename(s)} damaged: exit 1, and '{want}'", o + e)

    # --- bad input: exit 1, naming it ---
    empty = os.path.join(out, "empty")
    os.makedirs(empty, exist_ok=True)
    newer = copy_case(source, out, "newer_format")
    with h5py.File(os.path.join(latest_step(newer), "manifest.h5"), "r+") as m:
        version = int(m.attrs["format_version"])
        m.attrs.modify("format_version", numpy.int64(version + 1))
    bad_latest = copy_case(source, out, "bad_latest")
    with open(os.path.join(bad_latest, "latest"), "w") as f:
        f.write("step_99999999\n")
    a_file = os.path.join(out, "a_file")
    open(a_file, "w").write("not a checkpoint\n")
    for cmd in ("info", "verify"):
        for path, regex in ((empty, "is not a checkpoint"), (os.path.join(out, "nonexistent"), "no such"),
                            (a_file, "not a directory"),
                            (newer, f"format version {version + 1}, but this build of uoe reads version {version}"),
                            (bad_latest, "names step_99999999")):
            rc, o, e = run(exe, cmd, path)
            check(rc == 1 and path in o + e and regex in o + e, f"{cmd} {os.path.basename(path)}: exit 1, '{regex}'", o + e)

    # --- the command line ---
    for args in ([], ["bogus"], ["verify"], ["info"], ["verify", step, step], ["info", "--bogus", step],
                 ["verify", "--all=3", source], ["--bogus"]):
        rc, o, e = run(exe, *args)
        check(rc == 2 and "error" in e and not o.strip(), f"uoe-ckpt {' '.join(args)}: exit 2, a message", o + e)
    for args, named in ((["verify", step, "stray"], "'stray'"), (["info", "--bogus", step], "--bogus"),
                        (["bogus"], "'bogus'"), (["verify"], "CKPT is required")):
        rc, o, e = run(exe, *args)
        check(rc == 2 and named in e, f"uoe-ckpt {' '.join(args)}: the message names {named}", o + e)
    for args in (["--help"], ["info", "--help"], ["verify", "--help"]):
        rc, o, e = run(exe, *args)
        check(rc == 0 and "Usage:" in o, f"uoe-ckpt {' '.join(args)}: exit 0, the usage", o + e)

    if failures:
        print(f"FAIL: {len(failures)} checks failed:\n  " + "\n  ".join(failures))
        return 1
    print("all checks passed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
