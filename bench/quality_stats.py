"""The statistics of bench/quality (bench/README-quality.md, Seeds, pairing and the statistics): per-cell mean and sample
standard deviation over seeds, and the paired comparison of two models that share a seed (same
initialisation stream and same data order), with a Student t interval on the mean difference.

Standard library only: the t quantile is found by bisection on the exact CDF of Student's t for an
integer number of degrees of freedom (the finite series in cos θ, θ = atan(t / √ν)).
"""
import math


def mean(xs):
    if not xs:
        raise ValueError("mean of no values")
    return sum(xs) / len(xs)


def sample_sd(xs):
    """Sample standard deviation (divisor n − 1); needs at least 2 values."""
    if len(xs) < 2:
        raise ValueError(f"sample standard deviation needs at least 2 values, got {len(xs)}")
    m = mean(xs)
    return math.sqrt(sum((x - m) ** 2 for x in xs) / (len(xs) - 1))


def t_central(t, df):
    """P(|T| ≤ t) for Student's t with an integer df ≥ 1 and t ≥ 0."""
    if df < 1 or int(df) != df:
        raise ValueError(f"degrees of freedom must be a positive integer, got {df}")
    theta = math.atan(t / math.sqrt(df))
    c2 = math.cos(theta) ** 2
    if df % 2 == 1:
        # (2/π)(θ + sin θ cos θ (1 + 2/3 cos²θ + 2·4/(3·5) cos⁴θ + … up to cos^(df−3)θ))
        s, term = 0.0, 1.0
        if df > 1:
            s = term
            for k in range(1, (df - 3) // 2 + 1):
                term *= (2 * k) / (2 * k + 1) * c2
                s += term
        return 2 / math.pi * (theta + math.sin(theta) * math.cos(theta) * s)
    # sin θ (1 + 1/2 cos²θ + 1·3/(2·4) cos⁴θ + … up to cos^(df−2)θ)
    s, term = 1.0, 1.0
    for k in range(1, (df - 2) // 2 + 1):
        term *= (2 * k - 1) / (2 * k) * c2
        s += term
    return math.sin(theta) * s


def t_quantile(p, df):
    """The two-sided critical value: t with P(|T| ≤ t) = p (p = 0.95 for a 95% interval)."""
    if not 0 < p < 1:
        raise ValueError(f"probability must lie in (0, 1), got {p}")
    lo, hi = 0.0, 1.0
    while t_central(hi, df) < p:
        hi *= 2
    for _ in range(200):
        mid = (lo + hi) / 2
        if t_central(mid, df) < p:
            lo = mid
        else:
            hi = mid
    return (lo + hi) / 2


def paired(a, b, level=0.95):
    """Paired comparison of per-seed values a[i], b[i] (the same seed i): d = b − a, positive when a
    is lower (better). Returns n, the mean difference, its sample sd, the t critical value with n − 1
    degrees of freedom, and the interval mean ± t·sd/√n."""
    if len(a) != len(b):
        raise ValueError(f"paired comparison needs the same seeds on both sides, got {len(a)} and {len(b)} values")
    d = [y - x for x, y in zip(a, b)]
    n = len(d)
    m, s = mean(d), sample_sd(d)
    t = t_quantile(level, n - 1)
    half = t * s / math.sqrt(n)
    return {"n": n, "mean": m, "sd": s, "df": n - 1, "t": t, "lo": m - half, "hi": m + half}


def verdict(name_a, name_b, r):
    """The claim the interval supports: only where it excludes 0."""
    if r["lo"] > 0:
        return f"{name_a} beats {name_b}"
    if r["hi"] < 0:
        return f"{name_b} beats {name_a}"
    return "no claim (interval contains 0)"
