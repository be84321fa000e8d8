#!/usr/bin/env python3
"""The folders are layers: each may include only what its rule allows (docs/architecture.md, Layering).

usage: check_layering.py [ROOT] [--targets FILE] [--allowed FILE]
  ROOT            the repository root (default: this script's ../..)
  --targets FILE  also check the build: FILE is <build>/layering_targets.txt, which CMake writes
                  (cmake/uoe_library.cmake, uoe_write_layering_targets)
  --allowed FILE  the allowed exceptions, one `file include reason...` a line, instead of ALLOWED
                  below (for the fixtures' tests)

Reads every `#include "..."` and `#include <...>` line of ROOT's runtime/, parallel/, layers/,
checkpoints/, launcher/ and bench/ (tests/ is exempt: a test may reach into any layer) and exits 1
naming each forbidden one as `file:line: ... [rule]`, 0 when there is none. Every target sees the
repository root as an include directory, so the build alone would not refuse an include that goes
up the layers; this test does.

With --targets it checks the folder libraries the same way (one per folder, uoe_<folder>, and its
GPU twin uoe_<folder>_cuda): a library links only the libraries of the folders its folder may
include, the CPU libraries link no CUDA library and no GPU twin, a GPU twin links no CPU library,
a library builds only its own folder's files, every folder has its library, and every .cpp (and,
in a GPU build, .cu) file of a library folder is built by some target — a file nobody added to its
folder's CMakeLists.txt is named.

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

# Layer -> (the folders below it: what it may include and, for a library, link; system headers it
# must not reach; why). Each folder but bench/ is a library (uoe_<folder>); bench/ holds executables.
USES = {
    "runtime": (set(), {"mpi.h", "nccl.h"},
                "runtime knows no communication and no model"),
    "parallel": ({"runtime"}, set(),
                 "parallel knows no model and no files"),
    "layers": ({"runtime", "parallel"}, {"mpi.h", "nccl.h"},
               "layers computes the model: it never talks MPI/NCCL or builds a communicator"),
    "checkpoints": ({"runtime", "parallel"}, set(),
                    "checkpoints read and write named tensors, not layers' types"),
    "launcher": ({"runtime", "parallel", "layers", "checkpoints"}, set(),
                 "the top: may use every library"),
    "bench": ({"runtime", "parallel", "layers", "checkpoints"}, set(),
              "benches use the libraries, not the trainer's executable code"),
}
LAYERS = list(USES)
LIBRARIES = [layer for layer in LAYERS if layer != "bench"]
# Layer -> (folders it must not include, system headers it must not reach, why).
RULES = {layer: (set(LAYERS) - uses - {layer}, headers, why) for layer, (uses, headers, why) in USES.items()}

# Today's exceptions: (file, include as written) -> reason. No wildcards: one line per include.
ALLOWED = {
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


def read_allowed(path):
    allowed = {}
    with open(path, encoding="utf-8") as f:
        for line in f:
            parts = line.split(None, 2)
            if parts and not parts[0].startswith("#"):
                allowed[(parts[0], parts[1])] = parts[2].strip() if len(parts) > 2 else ""
    return allowed


# A folder library's name: uoe_<folder>, its shared objects uoe_<folder>_objects, its GPU twin
# uoe_<folder>_cuda.
LIBRARY = re.compile(r"^uoe_(" + "|".join(LIBRARIES) + r")(_objects|_cuda)?$")
CUDA_LIBRARY = re.compile(r"^(CUDA::|uoe_nccl$)")


def check_targets(root, path):
    """Problems of the folder libraries CMake defined (see --targets), as strings."""
    libraries, links, built = [], [], {}
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            parts = line.split(None, 2)
            if not parts or parts[0].startswith("#"):
                continue
            if parts[0] == "library" and len(parts) == 2:
                libraries.append(parts[1])
            elif parts[0] == "link" and len(parts) == 3:
                links.append((parts[1], parts[2].strip()))
            elif parts[0] == "source" and len(parts) == 3:
                src = parts[2].strip()
                rel = os.path.relpath(src, root) if os.path.isabs(src) else src
                built.setdefault(rel.replace(os.sep, "/"), []).append(parts[1])
            else:
                return [f"{path}:{n}: not a `library`, `link` or `source` line: {line.rstrip()}"]
    errors = []
    gpu_build = any(LIBRARY.match(lib) and LIBRARY.match(lib).group(2) == "_cuda" for lib in libraries)
    for layer in LIBRARIES:
        has_sources = any(name.endswith((".cpp", ".cu")) for _, _, names in os.walk(os.path.join(root, layer))
                          for name in names)
        if has_sources and f"uoe_{layer}" not in libraries:
            errors.append(f"CMake: no library uoe_{layer} for {layer}/ in {path} (uoe_folder_library({layer} ...) "
                          f"in {layer}/CMakeLists.txt)")
    for lib, item in links:
        m = LIBRARY.match(lib)
        if not m:
            continue
        layer, gpu = m.group(1), m.group(2) == "_cuda"
        uses, _, why = USES[layer]
        target = re.sub(r"^\$<LINK_ONLY:(.*)>$", r"\1", item)
        other = LIBRARY.match(target)
        if other:
            dep, dep_gpu = other.group(1), other.group(2) == "_cuda"
            if dep != layer and dep not in uses:
                errors.append(f"CMake: {lib} links {target}: {layer}/ links no {dep}/ [{why}]")
            if gpu and not dep_gpu:
                errors.append(f"CMake: {lib} links {target}: the GPU build links the GPU build of the libraries "
                              f"below ({'uoe_' + dep + '_cuda'}), never both builds in one binary")
            if not gpu and dep_gpu:
                errors.append(f"CMake: {lib} links {target}: the CPU build links no CUDA code "
                              f"(uoe-train loads no CUDA library)")
        elif not gpu and CUDA_LIBRARY.match(target):
            errors.append(f"CMake: {lib} links {target}: the CPU build links no CUDA library "
                          f"(uoe-train loads no CUDA library; CUDA_LINK is for uoe_{layer}_cuda)")
    for rel, targets in sorted(built.items()):
        for target in targets:
            m = LIBRARY.match(target)
            if m and rel.split("/", 1)[0] != m.group(1):
                errors.append(f"CMake: {target} builds {rel}: a folder's library builds only that folder's files")
    for layer in LIBRARIES:
        for dirpath, dirnames, filenames in os.walk(os.path.join(root, layer)):
            dirnames.sort()
            for name in sorted(filenames):
                if name.endswith(".cpp") or (gpu_build and name.endswith(".cu")):
                    rel = os.path.relpath(os.path.join(dirpath, name), root).replace(os.sep, "/")
                    if rel not in built:
                        errors.append(f"CMake: {rel} is built by no target: add it to {layer}/CMakeLists.txt "
                                      f"(uoe_folder_library)")
    return errors


def main(argv):
    args, targets, allowed, allowed_from = [], None, ALLOWED, "ALLOWED in tests/cli/check_layering.py"
    it = iter(argv[1:])
    for a in it:
        if a in ("--targets", "--allowed"):
            value = next(it, None)
            if value is None:
                print(__doc__, file=sys.stderr)
                return 2
            if a == "--targets":
                targets = value
            else:
                allowed, allowed_from = read_allowed(value), value
        else:
            args.append(a)
    if len(args) > 1:
        print(__doc__, file=sys.stderr)
        return 2
    root = os.path.abspath(args[0] if args else os.path.join(os.path.dirname(__file__), "..", ".."))
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
            if (rel, target) in allowed:
                used.add((rel, target))
                continue
            for r in reasons:
                errors.append(f'{rel}:{n}: #include {kind}{target}{">" if kind == "<" else chr(34)}: {r} [{why}]')

    # An exception whose file is here but whose include is gone: the list must shrink with the code.
    for (rel, target), reason in sorted(allowed.items()):
        if (rel, target) not in used and os.path.isfile(os.path.join(root, rel)):
            errors.append(f"{rel}: allowed exception for {target} ({reason}) no longer matches a "
                          f"forbidden include: remove it from {allowed_from}")

    if targets is not None:
        if not os.path.isfile(targets):
            print(f"check_layering: {targets} not found (CMake writes it at configure time)", file=sys.stderr)
            return 2
        errors += check_targets(root, targets)

    if errors:
        print(f"layering: {len(errors)} problem(s) in {len(files)} files under {root}")
        print("\n".join(errors))
        return 1
    print(f"layering: ok, {len(files)} files, {sum(len(v) for v in table.values())} includes, "
          f"{len(used)} allowed exception(s)" + (f"; the libraries of {targets}" if targets else ""))
    for key in sorted(used):
        print(f"  allowed: {key[0]} -> {key[1]}: {allowed[key]}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
