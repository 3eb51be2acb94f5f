"""Reports and comparisons as Markdown or CSV (JSON is the report itself).

Durations are seconds with three decimals, so the tables stay machine-readable; memory is shown
in binary units. The CSV is long-form (`section,group,metric,value`), one figure per row, which
every spreadsheet and dataframe pivots as it likes.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Iterator
from typing import Any

from console.formatting import human_bytes
from console.report import METRICS
from console.report.compare import verdict
from console.report.history import label

FIGURES = ("n", "mean", "p50", "p90", "p99", "max")
METRIC_TITLES = {
    "latency": "Latency (s, submitted to finished; succeeded jobs)",
    "run": "Run time (s, first step to outputs written; succeeded jobs)",
    "wait": "Queue wait (s, submitted to first step; every job that started)",
}


def seconds(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"


def span(size: int) -> str:
    """A bucket length in its largest whole unit: 30 s, 5 min, 2 h, 1 d."""
    for unit, name in ((86400, "d"), (3600, "h"), (60, "min")):
        if size % unit == 0:
            return f"{size // unit} {name}"
    return f"{size} s"


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    return ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|",
            *("| " + " | ".join(row) + " |" for row in rows)]


def _figure(key: str, value: Any) -> str:
    return str(value) if key == "n" else seconds(value)


def markdown(report: dict[str, Any]) -> str:
    counts, fail = report["counts"], report["failures"]
    rate = report["overall_jobs_per_minute"]
    lines = [f"# Performance report{' — ' + report['source'] if report.get('source') else ''}", "",
             f"Window: {report['since']} to {report['until']}. Finished: {counts['finished']} "
             f"({counts['succeeded']} succeeded, {counts['failed']} failed, {counts['cancelled']} cancelled); "
             f"{'-' if rate is None else f'{rate:.3f}'} succeeded jobs per minute over the window.", ""]
    for metric in METRICS:
        lines += [f"## {METRIC_TITLES[metric]}", ""]
        lines += _table(["group", *FIGURES], [[row["group"], *(_figure(k, row[metric][k]) for k in FIGURES)]
                                              for row in report["groups"]])
        lines.append("")
    through = report["throughput"]
    size = through["bucket_seconds"]
    lines += [f"## Throughput ({span(size)} buckets, per minute of each bucket)" if size else "## Throughput", ""]
    lines += _table(["bucket start", "succeeded", "failed", "cancelled", "jobs/min", "images/min"],
                    [[b["start"], str(b["succeeded"]), str(b["failed"]), str(b["cancelled"]),
                      f"{b['jobs_per_minute']:.3f}", f"{b['images_per_minute']:.3f}"] for b in through["buckets"]])
    lines += ["", "## Failures", ""]
    share = fail["rate_percent"]
    lines.append(f"Failure rate: {'-' if share is None else f'{share:.1f}%'} ({fail['failed']} of {fail['settled']} "
                 f"jobs that ran to an end); {fail['cancelled']} cancelled.")
    if fail["by_kind"]:
        lines += ["", *_table(["error kind", "jobs"], [[kind, str(n)] for kind, n in fail["by_kind"].items()])]
    lines += ["", "## Memory peaks (worker, per batch)", ""]
    lines += _table(["group", "jobs measured", "peak per image (max)", "peak per image (p50)",
                     "worker RSS (max)", "largest batch (images)"],
                    [[m["group"], str(m["measured"]), human_bytes(m["peak_bytes_per_image_max"]),
                      human_bytes(m["peak_bytes_per_image_p50"]), human_bytes(m["worker_rss_max"]),
                      "-" if m["batch_images_max"] is None else str(m["batch_images_max"])] for m in report["memory"]])
    return "\n".join(lines + ["", *_memory_history(report.get("memory_history"))]) + "\n"


def _memory_history(history: dict[str, Any] | None) -> list[str]:
    """The monitor's memory peaks per bucket over the window (reports saved before it had them: nothing)."""
    if not history:
        return []
    step = history["step"]
    lines = [f"## Memory over time (monitor, largest per {span(step)} bucket)" if step else "## Memory over time", ""]
    if not history["points"]:
        return lines + [f"No memory figures: {history['unavailable'] or 'none in this window'}."]
    return lines + _table(["bucket start", *(label(name) for name in history["series"])],
                          [[p["start"], *(human_bytes(p[name]) for name in history["series"])]
                           for p in history["points"]])


def _report_rows(report: dict[str, Any]) -> Iterator[tuple[str, str, str, Any]]:
    for key in ("finished", "succeeded", "failed", "cancelled"):
        yield "counts", "all", key, report["counts"][key]
    yield "throughput", "all", "overall_jobs_per_minute", report["overall_jobs_per_minute"]
    for row in report["groups"]:
        for metric in METRICS:
            for key, value in row[metric].items():
                yield metric, row["group"], key, value
    for bucket in report["throughput"]["buckets"]:
        for key in ("succeeded", "failed", "cancelled", "jobs_per_minute", "images_per_minute"):
            yield "throughput", bucket["start"], key, bucket[key]
    fail = report["failures"]
    for key in ("failed", "settled", "cancelled", "rate_percent"):
        yield "failures", "all", key, fail[key]
    for kind, n in fail["by_kind"].items():
        yield "failures", kind, "jobs", n
    for row in report["memory"]:
        for key, value in row.items():
            if key != "group":
                yield "memory", row["group"], key, value
    for point in (report.get("memory_history") or {}).get("points", []):
        for key, value in point.items():
            if key != "start":
                yield "memory_history", point["start"], key, value


def _csv(header: tuple[str, ...], rows: Iterator[tuple[Any, ...]]) -> str:
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(header)
    writer.writerows(("" if v is None else v for v in row) for row in rows)
    return out.getvalue()


def csv_text(report: dict[str, Any]) -> str:
    return _csv(("section", "group", "metric", "value"), _report_rows(report))


COMPARE_FIELDS = ("n_a", "n_b", "median_a", "median_b", "difference", "change_percent", "u", "p", "p_adjusted",
                  "delta", "magnitude", "significant")


def _number(value: Any, spec: str, suffix: str = "") -> str:
    return "-" if value is None else format(value, spec) + suffix


def _failure_rate(side: dict[str, Any]) -> str:
    return _number(side["failure_rate_percent"], ".1f", "%")


def compare_markdown(result: dict[str, Any]) -> str:
    a, b = result["a"], result["b"]
    lines = [f"# Comparison of {result['metric']} (seconds)", "",
             f"- A: {a['label']} — {a['jobs']} finished job(s), failure rate {_failure_rate(a)}",
             f"- B: {b['label']} — {b['jobs']} finished job(s), failure rate {_failure_rate(b)}", ""]
    rows = []
    for r in result["groups"]:
        tested = "yes" if r["significant"] else "no"
        rows.append([r["group"], str(r["n_a"]), str(r["n_b"]), seconds(r["median_a"]), seconds(r["median_b"]),
                     _number(r["difference"], "+.3f"), _number(r["change_percent"], "+.1f", "%"),
                     _number(r["p"], ".3g"), _number(r["p_adjusted"], ".3g"), _number(r["delta"], "+.2f"),
                     r["magnitude"] or "-", tested if r["p"] is not None else "not tested (one side only)"])
    lines += _table(["group", "n A", "n B", "median A", "median B", "B − A", "change", "p (U test)", "p (Holm)",
                     "Cliff's delta", "effect", "significant"], rows)
    return "\n".join(lines + ["", verdict(result)]) + "\n"


def compare_csv(result: dict[str, Any]) -> str:
    return _csv(("group", *COMPARE_FIELDS), ((row["group"], *(row[k] for k in COMPARE_FIELDS))
                                               for row in result["groups"]))
