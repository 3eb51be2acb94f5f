"""PNG charts for `sai report --charts DIR`, drawn with matplotlib's Agg backend (no display needed).

This module is imported only when charts are asked for, so `sai --help` and plain reports stay
fast. Each `*_figure` function builds one chart (None when it has no data) and `report_charts`
writes them; durations are on a log scale and dates in ISO 8601 (see `console.report.axes`).
"""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from console.formatting import parse_time
from console.report.axes import byte_unit, clip, iso_dates, log_bins, log_seconds
from console.report.history import label
from console.report.render import span
from console.report.summary import JobRecord, records, samples

if TYPE_CHECKING:
    from matplotlib.figure import Figure


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _subplots(width: float, height: float) -> tuple[Figure, Any]:
    return _pyplot().subplots(figsize=(width, height))


def _save(figure: Figure, path: Path) -> Path:
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    _pyplot().close(figure)
    return path


def _moment(text: str | None) -> datetime:
    return datetime.fromtimestamp(parse_time(text) or 0.0, UTC)


def latency_figure(by_group: dict[str, list[float]]) -> Figure | None:
    """Box plots of latency by size and steps, on a log scale."""
    if not by_group:
        return None
    figure, axes = _subplots(max(6.0, 1.4 * len(by_group) + 2), 4.5)
    axes.boxplot([clip(v) for v in by_group.values()], showmeans=True)
    axes.set_xticks(range(1, len(by_group) + 1), [f"{name}\n(n={len(v)})" for name, v in by_group.items()],
                    fontsize=8)
    log_seconds(axes.yaxis, [v for vs in by_group.values() for v in vs])
    axes.set_title("Latency by size and steps (succeeded jobs)")
    axes.set_ylabel("submit to finish (log scale)")
    axes.grid(axis="y", which="major", alpha=0.3)
    return figure


def wait_figure(waits: list[float]) -> Figure | None:
    """A histogram of queue waits with bins evenly spaced on a log scale."""
    if not waits:
        return None
    figure, axes = _subplots(7, 4)
    lo, hi = log_seconds(axes.xaxis, waits)
    axes.hist(clip(waits), bins=log_bins(lo, hi), color="tab:orange", edgecolor="white")
    axes.set_title(f"Queue wait (n={len(waits)})")
    axes.set_xlabel("submit to first step (log scale)")
    axes.set_ylabel("jobs")
    return figure


def throughput_figure(throughput: dict[str, Any]) -> Figure | None:
    """Succeeded and failed jobs per minute, bucket by bucket."""
    buckets, size = throughput["buckets"], throughput["bucket_seconds"]
    if not buckets:
        return None
    moments = [_moment(b["start"]) for b in buckets]
    succeeded = [b["jobs_per_minute"] for b in buckets]
    width = size / 86400 * 0.9  # matplotlib's date axis counts in days
    figure, axes = _subplots(8, 4)
    axes.bar(moments, succeeded, width=width, align="edge", label="succeeded")
    axes.bar(moments, [b["failed"] / (size / 60) for b in buckets], width=width, align="edge", bottom=succeeded,
             color="tab:red", label="failed")
    iso_dates(axes.xaxis, size * len(buckets))
    axes.set_title(f"Throughput ({span(size)} buckets)")
    axes.set_xlabel("bucket start (UTC)")
    axes.set_ylabel("jobs per minute")
    axes.legend()
    figure.autofmt_xdate()
    return figure


def memory_figure(history: dict[str, Any] | None, jobs: list[JobRecord]) -> Figure | None:
    """The monitor's memory peaks over the window, one line a series, and the worker's RSS after
    each batch (from the job rows) as points: the figures a capacity plan is made against."""
    points = (history or {}).get("points") or []
    batches = sorted((j.finished, j.worker_rss) for j in jobs if j.worker_rss is not None)
    if not points and not batches:
        return None
    series = (history or {}).get("series") or []
    size, unit = byte_unit(max([v for _, v in batches] + [p[n] or 0 for p in points for n in series]))
    figure, axes = _subplots(8, 4.5)
    moments = [_moment(p["start"]) for p in points]
    for name in series:
        shown = [(m, p[name] / size) for m, p in zip(moments, points) if p[name] is not None]
        axes.plot([m for m, _ in shown], [v for _, v in shown], marker="o", markersize=3, label=label(name))
    if batches:
        axes.scatter([datetime.fromtimestamp(t, UTC) for t, _ in batches], [v / size for _, v in batches],
                     s=14, color="black", zorder=3, label="worker RSS after a batch (jobs)")
    step = (history or {}).get("step")
    times = [m.timestamp() for m in moments] + [t for t, _ in batches]
    iso_dates(axes.xaxis, max(times) - min(times) + (step or 0))
    axes.set_ylim(bottom=0)
    axes.set_ylabel(f"memory ({unit})")
    axes.set_title(f"Memory (largest per {span(step)} bucket)" if step and points else "Memory")
    axes.set_xlabel("time (UTC)")
    axes.legend(fontsize=8)
    axes.grid(alpha=0.3)
    figure.autofmt_xdate()
    return figure


def report_charts(report: dict[str, Any], directory: Path) -> list[Path]:
    """latency.png (box plots by size and steps), throughput.png (succeeded and failed jobs per
    minute over time), queue_wait.png (histogram of waits), memory.png (memory over time)."""
    directory.mkdir(parents=True, exist_ok=True)
    jobs = records(report["jobs"])
    figures = {
        "latency.png": latency_figure(samples(jobs, "latency")),
        "throughput.png": throughput_figure(report["throughput"]),
        "queue_wait.png": wait_figure([v for vs in samples(jobs, "wait").values() for v in vs]),
        "memory.png": memory_figure(report.get("memory_history"), jobs),
    }
    return [_save(figure, directory / name) for name, figure in figures.items() if figure is not None]


def compare_figure(result: dict[str, Any], a_rows: list[dict[str, Any]],
                   b_rows: list[dict[str, Any]]) -> Figure | None:
    """The metric of A and B side by side, group by group, on a log scale."""
    metric = result["metric"]
    a, b = samples(records(a_rows), metric), samples(records(b_rows), metric)
    names = [row["group"] for row in result["groups"] if a.get(row["group"]) or b.get(row["group"])]
    if not names:
        return None
    figure, axes = _subplots(max(6.0, 1.8 * len(names) + 2), 4.5)
    for offset, side, colour in ((-0.2, a, "tab:blue"), (0.2, b, "tab:orange")):
        positions = [i + 1 + offset for i, name in enumerate(names) if side.get(name)]
        data = [clip(side[name]) for name in names if side.get(name)]
        if data:
            parts = axes.boxplot(data, positions=positions, widths=0.35, patch_artist=True)
            for box in parts["boxes"]:
                box.set_facecolor(colour)
    marks = {row["group"]: " *" if row["significant"] else "" for row in result["groups"]}
    axes.set_xticks(range(1, len(names) + 1), [name + marks.get(name, "") for name in names], fontsize=8)
    log_seconds(axes.yaxis, [v for side in (a, b) for name in names for v in side.get(name, [])])
    axes.set_title(f"{metric}: A (blue) vs B (orange); * significant")
    axes.set_ylabel(f"{metric} (log scale)")
    axes.grid(axis="y", which="major", alpha=0.3)
    return figure


def compare_chart(result: dict[str, Any], a_rows: list[dict[str, Any]], b_rows: list[dict[str, Any]],
                  directory: Path) -> list[Path]:
    """compare.png: the metric of A and B side by side, group by group."""
    directory.mkdir(parents=True, exist_ok=True)
    figure = compare_figure(result, a_rows, b_rows)
    return [] if figure is None else [_save(figure, directory / "compare.png")]
