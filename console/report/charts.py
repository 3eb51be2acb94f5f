"""PNG charts for `sai report --charts DIR`, drawn with matplotlib's Agg backend (no display needed).

matplotlib is imported only when charts are asked for, so `sai --help` and plain reports stay fast.
Each function returns the files it wrote; a chart with no data is not drawn.
"""

from __future__ import annotations

from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from console.report.render import span
from console.report.summary import records, samples
from console.widgets.display import parse_time


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(plt: Any, figure: Any, path: Path) -> Path:
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)
    return path


def _boxes(plt: Any, by_group: dict[str, list[float]], title: str, ylabel: str, path: Path) -> Path:
    figure, axes = plt.subplots(figsize=(max(6.0, 1.4 * len(by_group) + 2), 4.5))
    axes.boxplot(list(by_group.values()), showmeans=True)
    axes.set_xticks(range(1, len(by_group) + 1), [f"{name}\n(n={len(v)})" for name, v in by_group.items()],
                    fontsize=8)
    axes.set_title(title)
    axes.set_ylabel(ylabel)
    axes.grid(axis="y", alpha=0.3)
    return _save(plt, figure, path)


def _throughput(plt: Any, throughput: dict[str, Any], path: Path) -> Path:
    buckets, size = throughput["buckets"], throughput["bucket_seconds"]
    moments = [datetime.fromtimestamp(parse_time(b["start"]) or 0.0, timezone.utc) for b in buckets]
    succeeded = [b["jobs_per_minute"] for b in buckets]
    width = size / 86400 * 0.9  # matplotlib's date axis counts in days
    figure, axes = plt.subplots(figsize=(8, 4))
    axes.bar(moments, succeeded, width=width, align="edge", label="succeeded")
    axes.bar(moments, [b["failed"] / (size / 60) for b in buckets], width=width, align="edge", bottom=succeeded,
             color="tab:red", label="failed")
    axes.set_title(f"Throughput ({span(size)} buckets, UTC)")
    axes.set_ylabel("jobs per minute")
    axes.legend()
    figure.autofmt_xdate()
    return _save(plt, figure, path)


def _histogram(plt: Any, values: list[float], title: str, xlabel: str, path: Path) -> Path:
    figure, axes = plt.subplots(figsize=(7, 4))
    axes.hist(values, bins=min(30, max(5, len(values) // 2)), color="tab:orange")
    axes.set_title(title)
    axes.set_xlabel(xlabel)
    axes.set_ylabel("jobs")
    return _save(plt, figure, path)


def report_charts(report: dict[str, Any], directory: Path) -> list[Path]:
    """latency.png (box plot by size and steps), throughput.png (jobs per minute over time),
    queue_wait.png (histogram of waits)."""
    directory.mkdir(parents=True, exist_ok=True)
    plt = _pyplot()
    jobs = records(report["jobs"])
    written = []
    latency = samples(jobs, "latency")
    if latency:
        written.append(_boxes(plt, latency, "Latency by size and steps (succeeded jobs)", "seconds, submit to finish",
                              directory / "latency.png"))
    if report["throughput"]["buckets"]:
        written.append(_throughput(plt, report["throughput"], directory / "throughput.png"))
    waits = [v for vs in samples(jobs, "wait").values() for v in vs]
    if waits:
        written.append(_histogram(plt, waits, f"Queue wait (n={len(waits)})", "seconds, submit to first step",
                                  directory / "queue_wait.png"))
    return written


def compare_chart(result: dict[str, Any], a_rows: list[dict[str, Any]], b_rows: list[dict[str, Any]],
                  directory: Path) -> list[Path]:
    """compare.png: the metric of A and B side by side, group by group."""
    directory.mkdir(parents=True, exist_ok=True)
    metric = result["metric"]
    a, b = samples(records(a_rows), metric), samples(records(b_rows), metric)
    names = [row["group"] for row in result["groups"] if a.get(row["group"]) or b.get(row["group"])]
    if not names:
        return []
    plt = _pyplot()
    figure, axes = plt.subplots(figsize=(max(6.0, 1.8 * len(names) + 2), 4.5))
    for offset, side, colour in ((-0.2, a, "tab:blue"), (0.2, b, "tab:orange")):
        positions = [i + 1 + offset for i, name in enumerate(names) if side.get(name)]
        data = [side[name] for name in names if side.get(name)]
        if data:
            parts = axes.boxplot(data, positions=positions, widths=0.35, patch_artist=True)
            for box in parts["boxes"]:
                box.set_facecolor(colour)
    marks = {row["group"]: " *" if row["significant"] else "" for row in result["groups"]}
    axes.set_xticks(range(1, len(names) + 1), [name + marks.get(name, "") for name in names], fontsize=8)
    axes.set_title(f"{metric}: A (blue) vs B (orange); * significant")
    axes.set_ylabel("seconds")
    axes.grid(axis="y", alpha=0.3)
    return [_save(plt, figure, directory / "compare.png")]
