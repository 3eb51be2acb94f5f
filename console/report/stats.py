"""Statistics for performance reports: summaries, and the comparison of two samples.

Percentiles interpolate linearly between order statistics (numpy's default, "type 7"). Two samples
are compared with the two-sided Mann-Whitney U test, which assumes nothing about the shape of
latency distributions (they are skewed and often multi-modal), and Cliff's delta as the effect
size: P(b > a) - P(b < a), equal to the rank-biserial correlation of U. Its magnitude is named by
Romano et al.'s thresholds (2006). p-values of several groups are adjusted with Holm's method,
so that looking at many groups does not by itself produce "significant" differences.
"""

from __future__ import annotations

import bisect
from collections.abc import Sequence
from typing import Any

import numpy as np

PERCENTILES = (50, 90, 99)
ALPHA = 0.05
MAGNITUDES = ((0.147, "negligible"), (0.33, "small"), (0.474, "medium"))


def describe(values: Sequence[float]) -> dict[str, Any]:
    """n, mean, p50, p90, p99, min and max of `values` (figures are None when there are none)."""
    if not values:
        return {"n": 0, "mean": None, **{f"p{q}": None for q in PERCENTILES}, "min": None, "max": None}
    data = np.asarray(values, dtype=float)
    cuts = np.percentile(data, PERCENTILES)
    return {"n": int(data.size), "mean": float(data.mean()),
            **{f"p{q}": float(cut) for q, cut in zip(PERCENTILES, cuts)},
            "min": float(data.min()), "max": float(data.max())}


def median(values: Sequence[float]) -> float | None:
    return float(np.median(values)) if len(values) else None


def cliffs_delta(a: Sequence[float], b: Sequence[float]) -> float:
    """P(b > a) - P(b < a) over all pairs: +1 when every b is larger, 0 for the same distribution."""
    if not a or not b:
        raise ValueError("Cliff's delta needs two non-empty samples")
    ordered = sorted(a)
    above = below = 0
    for value in b:
        below += len(ordered) - bisect.bisect_right(ordered, value)
        above += bisect.bisect_left(ordered, value)
    return (above - below) / (len(a) * len(b))


def magnitude(delta: float) -> str:
    size = abs(delta)
    for limit, name in MAGNITUDES:
        if size < limit:
            return name
    return "large"


def mann_whitney(a: Sequence[float], b: Sequence[float]) -> tuple[float, float]:
    """(U of b, two-sided p-value). Exact for small samples without ties, else the normal
    approximation with tie and continuity corrections (scipy's "auto")."""
    from scipy.stats import mannwhitneyu

    result = mannwhitneyu(b, a, alternative="two-sided")
    p = float(result.pvalue)
    return float(result.statistic), 1.0 if p != p else min(1.0, p)


def holm(p_values: Sequence[float]) -> list[float]:
    """Holm-Bonferroni adjusted p-values, in the order given."""
    order = sorted(range(len(p_values)), key=lambda i: p_values[i])
    adjusted = [0.0] * len(p_values)
    running = 0.0
    for rank, index in enumerate(order):
        running = max(running, min(1.0, (len(p_values) - rank) * p_values[index]))
        adjusted[index] = running
    return adjusted


def compare_samples(a: Sequence[float], b: Sequence[float]) -> dict[str, Any]:
    """Medians, their difference (b - a), the U test and Cliff's delta for one group.
    `p` and `delta` are None when either side is empty."""
    median_a, median_b = median(a), median(b)
    row: dict[str, Any] = {"n_a": len(a), "n_b": len(b), "median_a": median_a, "median_b": median_b,
                           "difference": None, "change_percent": None, "u": None, "p": None,
                           "delta": None, "magnitude": None}
    if median_a is None or median_b is None:
        return row
    row["difference"] = median_b - median_a
    row["change_percent"] = 100.0 * (median_b - median_a) / median_a if median_a else None
    row["u"], row["p"] = mann_whitney(a, b)
    row["delta"] = cliffs_delta(a, b)
    row["magnitude"] = magnitude(row["delta"])
    return row


def compare_groups(a: dict[str, list[float]], b: dict[str, list[float]],
                   alpha: float = ALPHA) -> list[dict[str, Any]]:
    """`compare_samples` for every group in either side, with Holm-adjusted p-values over the groups
    both sides have, and `significant` (adjusted p below `alpha`). Groups keep the order of `a`, then
    those only `b` has."""
    names = list(a) + [name for name in b if name not in a]
    rows = [{"group": name, **compare_samples(a.get(name, []), b.get(name, []))} for name in names]
    tested = [row for row in rows if row["p"] is not None]
    for row, adjusted in zip(tested, holm([row["p"] for row in tested])):
        row["p_adjusted"] = adjusted
    for row in rows:
        row.setdefault("p_adjusted", None)
        row["significant"] = row["p_adjusted"] is not None and row["p_adjusted"] < alpha
    return rows


BUCKETS = (60, 300, 600, 900, 1800, 3600, 7200, 21600, 43200, 86400)
MAX_BUCKETS = 48


def bucket_size(span: float) -> int:
    """The smallest of BUCKETS that cuts `span` seconds into at most MAX_BUCKETS buckets."""
    return next((size for size in BUCKETS if span / size <= MAX_BUCKETS), BUCKETS[-1])
