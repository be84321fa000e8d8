#!/usr/bin/env python3
"""Writes the seed inputs of fuzz_manifest (corpus/fuzz_manifest/), which are FuzzedDataProvider
encodings rather than files: run from tests/fuzz/corpus to regenerate them.

FuzzedDataProvider takes integers from the END of the input, one byte per value when the range is
below 256, and strings from the front; `ints` lists those bytes in the order fuzz_manifest.cpp
consumes them (see check_manifest, check_config_compatible, check_step_name there)."""


def manifest_seed(shards, tensors):
    ints = [2, shards, len(tensors)]  # selector (check_manifest), shard files, tensors
    for shape, slabs in tensors:
        # index dims: rank 0, then "well-formed" (bool 1) with slabs = 1 + byte
        ints += [0, 1, len(slabs) - 1, len(shape)]
        for d in shape:
            ints += [3, d + 1]  # pick_i64's small case, InRange(-1, 9)
        for shard, begin, end in slabs:
            ints += [3, shard + 1, 3, begin + 1, 3, end + 1]
    return bytes(reversed(ints))


SEEDS = {
    "tiled_two_shards": (2, [([4, 3], [(0, 0, 2), (1, 2, 4)]), ([5], [(0, 0, 5)])]),  # accepted
    "gap": (2, [([4, 3], [(0, 0, 1), (1, 2, 4)])]),
    "overlap": (2, [([4], [(0, 0, 3), (1, 2, 4)])]),
    "shard_out_of_range": (1, [([2], [(0, 0, 2)]), ([3, 2], [(1, 0, 3)])]),
}

if __name__ == "__main__":
    for name, (shards, tensors) in SEEDS.items():
        with open(f"fuzz_manifest/{name}", "wb") as f:
            f.write(manifest_seed(shards, tensors))
    # config_check_compatible: the stored INI (tiny.ini) at the front, ended by "\\\n" (how
    # ConsumeRandomLengthString ends a string); then bool 1 (current = the default config), selector 0.
    with open("../../../launcher/configs/tiny.ini", "rb") as f:
        ini = f.read().replace(b"\\", b"")
    with open("fuzz_manifest/config_tiny_vs_default", "wb") as f:
        f.write(ini + b"\\\n" + bytes([1, 0]))
    with open("fuzz_manifest/step_name", "wb") as f:  # parse_step_name, selector 1
        f.write(b"step_00001200" + bytes([1]))
