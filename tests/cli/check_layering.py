#!/usr/bin/env python3
"""The folders are layers: each may include only what its rule allows (docs/architecture.md, Layering).

usage: check_layering.py [ROOT]      ROOT: the repository root (default: this script's ../..)

Reads every `#include "..."` and `#include <...>` line of ROOT's runtime/, parallel/, layers/,
checkpoints/, launcher/ and bench/ (tests/ is exempt: a test may reach into any layer) and exits 1
naming each forbidden one as `file:line: ... [rule]`, 0 when there is none. Every target sees the
repository root as an include directory, so the build alone would not refuse an include that goes
up the layers; this test does.

A forbidden system header (<mpi.h>, <nccl.h>) is also found through the project's own headers: a
layers/ file that includes "parallel/comm.hpp", which includes <mpi.h>, breaks the rule as if it
included <mpi.h> itself, and the message names the chain.

ALLOWED lists today's exceptions, each an exact (file, include) pair with the reason it stands.
It is meant to shrink: an entry that no longer matches an include is itself an error, so a fixed
violation must leave the list in the same commit. Lines are read as text, preprocessor conditions
ignored: an include under #if UOE_HAVE_CUDA counts like any other.
"""
import os
import re
import sys

# Layer -> (folders it must not include, system headers it must not reach, why).
RULES = {
    "runtime": ({"parallel", "layers", "checkpoints", "launcher", "bench"}, {"mpi.h", "nccl.h"},
                "runtime knows no communication and no model"),
    "parallel": ({"layers", "checkpoints", "launcher", "bench"}, set(),
                 "parallel knows no model and no files"),
    "layers": ({"checkpoints", "launcher", "bench"}, {"mpi.h", "nccl.h"},
               "layers computes the model: it never talks MPI/NCCL or builds a communicator"),
    "checkpoints": ({"layers", "launcher", "bench"}, set(),
                    "checkpoints read and write named tensors, not layers' types"),
    "bench": ({"launcher"}, set(),
              "benches use the libraries, not the trainer's executable code"),
    "launcher": (set(), set(), "the top: may include every layer"),
}
LAYERS = list(RULES)

# Today's exceptions: (file, include as written) -> reason. No wildcards: one line per include.
ALLOWED = {
    ("runtime/version.cpp", "mpi.h"):
        "--version names the MPI library (MPI_Get_library_version: no communicator, no communication)",
    ("runtime/device_cuda.cu", "mpi.h"):
        "CUDA error messages name the world rank (MPI_Comm_rank on MPI_COMM_WORLD, no communication)",
    ("runtime/device_cuda.cu", "nccl.h"):
        "--version names the NCCL library (ncclGetVersion: no communicator)",
    ("layers/device_model.cu", "mpi.h"):
        "the device step builds its own communicators until the one-pipeline redesign",
    ("layers/device_model.cu", "parallel/comm.hpp"):
        "the device step builds its own communicators until the one-pipeline redesign",
    ("layers/device_model.cu", "parallel/mpi_exchange.hpp"):
        "the device step builds its own communicators until the one-pipeline redesign",
    ("layers/device_model.cu", "parallel/nccl_comm.hpp"):
        "the device step builds its own communicators until the one-pipeline redesign",
}

SOURCE_SUFFIXES = (".cpp", ".hpp", ".h", ".cc", ".cu", ".cuh")
INCLUDE = re.compile(r'^\s*#\s*include\s*([<"])([^>"]+)[>"]')


def sources(root):
    for layer in LAYERS:
        top = os.path.join(root, layer)
        for dirpath, dirnames, filenames in os.walk(top):
            dirnames.sort()
            for name in sorted(filenames):
                if name.endswith(SOURCE_SUFFIXES):
                    yield os.path.relpath(os.path.join(dirpath, name), root).replace(os.sep, "/")


def includes(root, rel):
    """[(line, kind, target)] of one file; kind '"' or '<'."""
    out = []
    with open(os.path.join(root, rel), encoding="utf-8", errors="replace") as f:
        for n, text in enumerate(f, 1):
            m = INCLUDE.match(text)
            if m:
                out.append((n, m.group(1), m.group(2).strip()))
    return out


def resolve(root, rel, target):
    """The project file an include names (root-relative), or None (a system or generated header)."""
    for base in ("", os.path.dirname(rel)):
        cand = os.path.normpath(os.path.join(base, target)).replace(os.sep, "/")
        if not cand.startswith("..") and os.path.isfile(os.path.join(root, cand)):
            return cand
    return None


def main(argv):
    if len(argv) > 2:
        print(__doc__, file=sys.stderr)
        return 2
    root = os.path.abspath(argv[1] if len(argv) == 2 else os.path.join(os.path.dirname(__file__), "..", ".."))
    files = list(sources(root))
    if not files:  # a wrong root must not pass by checking nothing
        print(f"check_layering: no sources under {root}/{{{','.join(LAYERS)}}}", file=sys.stderr)
        return 2
    table = {f: includes(root, f) for f in files}

    # System headers each project file reaches through project includes: header -> chain.
    reach_memo = {}

    def reaches(rel, stack=()):
        if rel in reach_memo:
            return reach_memo[rel]
        if rel in stack:  # an include cycle: #pragma once ends it, so does this
            return {}
        found = {}
        for n, kind, target in table.get(rel) or includes(root, rel):
            inner = resolve(root, rel, target) if kind == '"' or "/" in target else None
            if inner is None:
                found.setdefault(os.path.basename(target), [f"{rel}:{n}"])
            else:
                for header, chain in reaches(inner, stack + (rel,)).items():
                    found.setdefault(header, [f"{rel}:{n}"] + chain)
        reach_memo[rel] = found
        return found

    errors, used = [], set()
    for rel in files:
        layer = rel.split("/", 1)[0]
        banned_dirs, banned_headers, why = RULES[layer]
        for n, kind, target in table[rel]:
            reasons = []
            top = target.split("/", 1)[0]
            inner = resolve(root, rel, target)
            if kind == '"' and top in banned_dirs and top != layer:
                reasons.append(f"{layer}/ includes no {top}/")
            if inner is None and os.path.basename(target) in banned_headers:  # <mpi.h> or "mpi.h"
                reasons.append(f"{layer}/ includes no <{os.path.basename(target)}>")
            elif inner is not None and banned_headers:
                for header, chain in sorted(reaches(inner).items()):
                    if header in banned_headers:
                        reasons.append(f"{layer}/ includes no <{header}>, which this pulls in via "
                                       + " -> ".join(chain))
            if not reasons:
                continue
            if (rel, target) in ALLOWED:
                used.add((rel, target))
                continue
            for r in reasons:
                errors.append(f'{rel}:{n}: #include {kind}{target}{">" if kind == "<" else chr(34)}: {r} [{why}]')

    # An exception whose file is here but whose include is gone: the list must shrink with the code.
    for (rel, target), reason in sorted(ALLOWED.items()):
        if (rel, target) not in used and os.path.isfile(os.path.join(root, rel)):
            errors.append(f"{rel}: allowed exception for {target} ({reason}) no longer matches a "
                          "forbidden include: remove it from ALLOWED in tests/cli/check_layering.py")

    if errors:
        print(f"layering: {len(errors)} problem(s) in {len(files)} files under {root}")
        print("\n".join(errors))
        return 1
    print(f"layering: ok, {len(files)} files, {sum(len(v) for v in table.values())} includes, "
          f"{len(used)} allowed exception(s)")
    for key in sorted(used):
        print(f"  allowed: {key[0]} -> {key[1]}: {ALLOWED[key]}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
