#!/usr/bin/env python3
"""bench/quality_stats.py on numbers worked by hand: the sample standard deviation, Student t critical
values against their closed forms for 1 and 2 degrees of freedom, the paired interval and the claim
it allows.

usage: quality_stats_check.py

Independent formulas used here (not the module's series):
- df 1 (Cauchy): P(|T| ≤ t) = (2/π) atan t, so t(0.95) = tan(0.475 π) = 12.7062…
- df 2: P(|T| ≤ t) = t / √(2 + t²), so t(0.95) = 0.95 · √2 / √(1 − 0.95²) = 4.3027…
- table values t(0.975; 4) = 2.776, t(0.975; 9) = 2.262, t(0.975; 29) = 2.045 (3 decimals).
"""
import math
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "bench"))
import quality_stats as qs  # noqa: E402

failures = []


def close(what, got, want, tol):
    if not abs(got - want) <= tol:
        failures.append(f"{what}: got {got!r}, want {want!r} (± {tol})")


def raises(what, fn):
    try:
        fn()
    except ValueError:
        return
    failures.append(f"{what}: no ValueError")


# Critical values.
close("t(0.95, df 1)", qs.t_quantile(0.95, 1), math.tan(0.475 * math.pi), 1e-9)
close("t(0.95, df 2)", qs.t_quantile(0.95, 2), 0.95 * math.sqrt(2) / math.sqrt(1 - 0.95 ** 2), 1e-9)
close("t(0.95, df 4)", qs.t_quantile(0.95, 4), 2.776, 5e-4)
close("t(0.95, df 9)", qs.t_quantile(0.95, 9), 2.262, 5e-4)
close("t(0.95, df 29)", qs.t_quantile(0.95, 29), 2.045, 5e-4)
for t in (0.3, 1.0, 4.0):  # the CDFs themselves, both parities, against the closed forms
    close(f"P(|T| <= {t}), df 1", qs.t_central(t, 1), 2 / math.pi * math.atan(t), 1e-12)
    close(f"P(|T| <= {t}), df 2", qs.t_central(t, 2), t / math.sqrt(2 + t * t), 1e-12)
    # df 3: (2/π)(atan(t/√3) + √3 t / (3 + t²))
    close(f"P(|T| <= {t}), df 3", qs.t_central(t, 3),
          2 / math.pi * (math.atan(t / math.sqrt(3)) + math.sqrt(3) * t / (3 + t * t)), 1e-12)

# Mean and sample sd of 1.70, 1.75, 1.72: mean 1.7233…, squares 0.0005444 + 0.0007111 + 0.0000111.
close("mean", qs.mean([1.70, 1.75, 1.72]), 5.17 / 3, 1e-12)
close("sample sd", qs.sample_sd([1.70, 1.75, 1.72]), math.sqrt((0.0049 / 9 + 0.0064 / 9 + 0.0001 / 9) / 2), 1e-12)

# Paired, three seeds: a = uoe, b = a baseline; d = b − a = 0.10, 0.03, 0.11: mean 0.08,
# sd √((0.02² + 0.05² + 0.03²) / 2) = √0.0019, half width t(df 2) · √0.0019 / √3.
a, b = [1.70, 1.75, 1.72], [1.80, 1.78, 1.83]
r = qs.paired(a, b)
t2 = 0.95 * math.sqrt(2) / math.sqrt(1 - 0.95 ** 2)
half = t2 * math.sqrt(0.0019) / math.sqrt(3)
close("paired n=3 mean", r["mean"], 0.08, 1e-12)
close("paired n=3 sd", r["sd"], math.sqrt(0.0019), 1e-12)
close("paired n=3 lo", r["lo"], 0.08 - half, 1e-9)
close("paired n=3 hi", r["hi"], 0.08 + half, 1e-9)
if r["df"] != 2 or r["n"] != 3:
    failures.append(f"paired n=3: n {r['n']}, df {r['df']} (want 3, 2)")
if qs.verdict("uoe", "moe", r) != "no claim (interval contains 0)":  # lo = 0.08 − 0.108 < 0
    failures.append(f"paired n=3: claim '{qs.verdict('uoe', 'moe', r)}' where the interval contains 0")

# A difference the interval does resolve: d = 0.10, 0.11, 0.12 (mean 0.11, sd 0.01).
r = qs.paired([1.0, 1.0, 1.0], [1.10, 1.11, 1.12])
close("paired resolved lo", r["lo"], 0.11 - t2 * 0.01 / math.sqrt(3), 1e-9)
if qs.verdict("uoe", "dense", r) != "uoe beats dense":
    failures.append(f"resolved: claim '{qs.verdict('uoe', 'dense', r)}', want 'uoe beats dense'")
r = qs.paired([1.10, 1.11, 1.12], [1.0, 1.0, 1.0])
if qs.verdict("uoe", "dense", r) != "dense beats uoe":
    failures.append(f"resolved the other way: claim '{qs.verdict('uoe', 'dense', r)}', want 'dense beats uoe'")

# Two seeds (the smoke test's): d = 0.05, 0.01: mean 0.03, sd √0.0008, t = tan(0.475 π).
r = qs.paired([2.0, 2.1], [2.05, 2.11])
h = math.tan(0.475 * math.pi) * math.sqrt(0.0008) / math.sqrt(2)
close("paired n=2 lo", r["lo"], 0.03 - h, 1e-9)
close("paired n=2 hi", r["hi"], 0.03 + h, 1e-9)

# Bad input.
raises("sd of one value", lambda: qs.sample_sd([1.0]))
raises("unequal pairing", lambda: qs.paired([1.0, 2.0], [1.0, 2.0, 3.0]))
raises("df 0", lambda: qs.t_quantile(0.95, 0))
raises("p 1", lambda: qs.t_quantile(1.0, 3))

if failures:
    print("FAIL:\n  " + "\n  ".join(failures))
    sys.exit(1)
print("ok: t critical values, sample sd, paired intervals and claims")
