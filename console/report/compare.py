"""`sai report --compare A B`: two periods or two configurations, group by group."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from console.report.stats import ALPHA, compare_groups
from console.report.summary import failures, records, samples

FORMAT, VERSION = "sai-report-compare", 1


@dataclass(frozen=True)
class Side:
    """One side of a comparison: its label (the period or the file it came from) and its job rows."""

    label: str
    since: str | None
    until: str | None
    rows: list[dict[str, Any]]


def compare(a: Side, b: Side, metric: str = "latency", alpha: float = ALPHA) -> dict[str, Any]:
    jobs_a, jobs_b = records(a.rows), records(b.rows)
    groups = compare_groups(samples(jobs_a, metric), samples(jobs_b, metric), alpha)
    return {
        "format": FORMAT, "version": VERSION, "metric": metric, "alpha": alpha,
        "a": {"label": a.label, "since": a.since, "until": a.until, "jobs": len(jobs_a),
              "failure_rate_percent": failures(jobs_a)["rate_percent"]},
        "b": {"label": b.label, "since": b.since, "until": b.until, "jobs": len(jobs_b),
              "failure_rate_percent": failures(jobs_b)["rate_percent"]},
        "groups": groups,
        "significant": [row["group"] for row in groups if row["significant"]],
    }


def verdict(result: dict[str, Any]) -> str:
    """One line naming the significant differences, or saying there are none."""
    alpha, metric = result["alpha"], result["metric"]
    tested = [row for row in result["groups"] if row["p"] is not None]
    if not tested:
        return f"Nothing to compare: no group has {metric} figures on both sides."
    hits = [row for row in tested if row["significant"]]
    if not hits:
        return (f"No significant difference in {metric} at alpha {alpha:g} (Holm-adjusted over "
                f"{len(tested)} group(s)).")
    parts = []
    for row in hits:
        direction = "slower" if row["difference"] > 0 else "faster"
        change = "" if row["change_percent"] is None else f", {row['change_percent']:+.1f}%"
        parts.append(f"{row['group']}: B {direction} by {abs(row['difference']):.3f} s{change} "
                     f"(p={row['p_adjusted']:.3g}, {row['magnitude']} effect, delta={row['delta']:+.2f})")
    return f"Significant at alpha {alpha:g} (Holm-adjusted): " + "; ".join(parts) + "."
