#!/usr/bin/env python3
"""Every CTest test has a TIMEOUT, so no test can hang CI.

usage: check_timeouts.py CTEST BUILD_DIR     lists BUILD_DIR's tests (ctest -N --show-only=json-v1)
       check_timeouts.py --json FILE         reads such a listing from FILE (the negative test)

Exits 1 naming every test without a positive TIMEOUT (discovered GoogleTest cases included: they
are in the listing once their binary is built), 0 when all have one.
"""
import json
import subprocess
import sys


def listing():
    if len(sys.argv) == 3 and sys.argv[1] == "--json":
        return json.load(open(sys.argv[2]))
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    out = subprocess.run([sys.argv[1], "--test-dir", sys.argv[2], "-N", "--show-only=json-v1"],
                         check=True, capture_output=True, text=True, timeout=50).stdout
    return json.loads(out)


def main():
    tests = listing().get("tests", [])
    if not tests:
        print("FAIL: the listing holds no tests")
        return 1
    missing = []
    for t in tests:
        # gtest_discover_tests' stand-in for a binary not built yet: it fails at once (nothing to
        # hang) and CMake gives it none of the discovered tests' properties.
        if t["name"].endswith("_NOT_BUILT"):
            continue
        props = {p["name"]: p["value"] for p in t.get("properties", [])}
        if not float(props.get("TIMEOUT", 0) or 0) > 0:
            missing.append(t["name"])
    if missing:
        print(f"FAIL: {len(missing)} of {len(tests)} tests have no TIMEOUT: {', '.join(missing)}")
        return 1
    longest = max(float(p["value"]) for t in tests for p in t["properties"] if p["name"] == "TIMEOUT")
    print(f"ok: all {len(tests)} tests have a TIMEOUT (longest {longest:g} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
