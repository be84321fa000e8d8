#!/usr/bin/env python3
"""Are two uoe checkpoints the same state, bitwise?

usage: checkpoint_equal.py DIR_A DIR_B      (two step_* directories; exit 0 if equal, 1 if not)

Compares every file of the two directories: every dataset (parameters /model, AdamW moments
/optim/m and /optim/v, /rng, /data_cursor, the manifest's /index) byte for byte, with its type and
shape, and every attribute (/state: step, seed, lr, shard, shards; slab attributes; the manifest's
step, seed, lr, world, ep, shard_files). The manifest's config_ini is compared with the options that
name where a run writes or what it resumed from (checkpoint-dir, resume, metrics, log-every) left
out: two runs of one training, one interrupted, differ only there.

Uses h5py when the interpreter has it; otherwise the HDF5 command-line tools (h5ls, h5dump -b, which
launcher/install-deps installs): datasets are still compared bitwise, attributes as h5dump prints
them (and the manifest's config_ini is then skipped). Also a module: compare(a, b) returns the list of
differences.
"""
import os
import re
import subprocess
import sys
import tempfile

# Options of config_ini that differ between an interrupted run and an uninterrupted one of the
# same training without changing what it computes.
RUN_LOCATION_KEYS = ("checkpoint-dir", "resume", "metrics", "log-every")


def _config_entries(text):
    out = {}
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#") or "=" not in line:
            continue
        k, v = line.split("=", 1)
        if k.strip() not in RUN_LOCATION_KEYS:
            out[k.strip()] = v.strip()
    return out


def _as_text(v):
    return v.decode() if isinstance(v, bytes) else str(v)


def _compare_h5py(h5py, fa, fb, name, diffs):
    import numpy as np

    def attrs(obj, where):
        ka, kb = set(obj[0].attrs.keys()), set(obj[1].attrs.keys())
        if ka != kb:
            diffs.append(f"{name} {where}: attributes {sorted(ka ^ kb)} in only one")
        for k in sorted(ka & kb):
            va, vb = obj[0].attrs[k], obj[1].attrs[k]
            if k == "config_ini":
                ca, cb = _config_entries(_as_text(va)), _config_entries(_as_text(vb))
                if ca != cb:
                    keys = sorted(x for x in set(ca) | set(cb) if ca.get(x) != cb.get(x))
                    diffs.append(f"{name} {where}@config_ini differs in {keys}")
                continue
            aa, ab = np.asarray(va), np.asarray(vb)
            if aa.dtype != ab.dtype or aa.shape != ab.shape or aa.tobytes() != ab.tobytes():
                diffs.append(f"{name} {where}@{k}: {va!r} vs {vb!r}")

    objs_a, objs_b = [], []
    fa.visit(objs_a.append)
    fb.visit(objs_b.append)
    if set(objs_a) != set(objs_b):
        diffs.append(f"{name}: objects in only one of them: {sorted(set(objs_a) ^ set(objs_b))[:10]}")
    attrs((fa, fb), "/")
    for o in sorted(set(objs_a) & set(objs_b)):
        a, b = fa[o], fb[o]
        attrs((a, b), "/" + o)
        if isinstance(a, h5py.Dataset):
            if not isinstance(b, h5py.Dataset):
                diffs.append(f"{name} /{o}: a dataset in one, not in the other")
                continue
            if a.dtype != b.dtype or a.shape != b.shape:
                diffs.append(f"{name} /{o}: {a.dtype}{a.shape} vs {b.dtype}{b.shape}")
            elif a[()].tobytes() != b[()].tobytes():
                diffs.append(f"{name} /{o}: data differs")


def _h5dump_datasets(path):
    out = subprocess.run(["h5ls", "-r", path], capture_output=True, text=True, check=True).stdout
    return sorted(line.split()[0] for line in out.splitlines() if len(line.split()) > 1 and line.split()[1] == "Dataset")


def _h5dump_bytes(path, dataset, tmp):
    subprocess.run(["h5dump", "-b", "LE", "-d", dataset, "-o", tmp, path], capture_output=True, check=True)
    with open(tmp, "rb") as f:
        return f.read()


def _h5dump_attrs(path):
    text = subprocess.run(["h5dump", "-A", path], capture_output=True, text=True, check=True).stdout
    lines = text.splitlines()[1:]  # the first line names the file
    out, skip_indent = [], None
    for line in lines:
        if skip_indent is not None:
            if line == skip_indent + "}":
                skip_indent = None
            continue
        m = re.match(r'^(\s*)ATTRIBUTE "config_ini" \{', line)
        if m:
            skip_indent = m.group(1)
            continue
        out.append(line)
    return out


def _compare_tools(pa, pb, name, diffs):
    da, db = _h5dump_datasets(pa), _h5dump_datasets(pb)
    if da != db:
        diffs.append(f"{name}: datasets in only one of them: {sorted(set(da) ^ set(db))[:10]}")
    with tempfile.TemporaryDirectory() as t:
        for d in sorted(set(da) & set(db)):
            if _h5dump_bytes(pa, d, f"{t}/a") != _h5dump_bytes(pb, d, f"{t}/b"):
                diffs.append(f"{name} {d}: data differs")
    if _h5dump_attrs(pa) != _h5dump_attrs(pb):
        diffs.append(f"{name}: attributes differ (h5dump -A)")


def compare(dir_a, dir_b):
    """Differences between two checkpoint directories ([] when they hold the same state)."""
    try:
        import h5py
    except ImportError:
        h5py = None
    files_a = sorted(f for f in os.listdir(dir_a) if f.endswith(".h5"))
    files_b = sorted(f for f in os.listdir(dir_b) if f.endswith(".h5"))
    diffs = []
    if files_a != files_b:
        diffs.append(f"files {files_a} vs {files_b}")
    for name in sorted(set(files_a) & set(files_b)):
        pa, pb = os.path.join(dir_a, name), os.path.join(dir_b, name)
        if h5py is not None:
            with h5py.File(pa, "r") as fa, h5py.File(pb, "r") as fb:
                _compare_h5py(h5py, fa, fb, name, diffs)
        else:
            _compare_tools(pa, pb, name, diffs)
    return diffs


def method():
    """How compare() compares: "h5py" when this interpreter has it, else "h5dump"."""
    try:
        import importlib.util
        return "h5py" if importlib.util.find_spec("h5py") else "h5dump"
    except (ImportError, ValueError):
        return "h5dump"


def main():
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    diffs = compare(sys.argv[1], sys.argv[2])
    for d in diffs:
        print("DIFF:", d)
    if diffs:
        sys.exit(1)
    print(f"equal ({method()}): {sys.argv[1]} and {sys.argv[2]}")


if __name__ == "__main__":
    main()
