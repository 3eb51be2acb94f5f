"""The report's charts on realistic job rows: log-scale durations, ISO dates, memory over time."""

from __future__ import annotations

import re
from typing import Any

import numpy as np
import pytest
from matplotlib.figure import Figure
from PIL import Image

from console.report import history, render, summary
from console.report.axes import duration_label, tick_texts
from console.report.charts import latency_figure, memory_figure, report_charts, throughput_figure, wait_figure
from tests.report.report_helpers import T0, row

ISO = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d(:\d\d)?$")


def skewed_rows(outlier: float = 1000.0) -> list[dict[str, Any]]:
    """Forty ordinary jobs (waits around 0.5 s, runs around 3 s, log-normal as real ones are) and
    one that waited `outlier` seconds behind a stuck batch."""
    rng = np.random.default_rng(20)
    rows, clock = [], 0.0
    for i, (wait, run) in enumerate(zip(rng.lognormal(np.log(0.5), 0.6, 40), rng.lognormal(np.log(3.0), 0.4, 40))):
        rows.append(row(f"j{i}", clock, clock + wait, clock + wait + run))
        clock += 20.0
    rows.append(row("stuck", clock, clock + outlier, clock + outlier + 3.0))
    return rows


def spread(figure: Figure, axis: str, values: list[float]) -> float:
    """How much of the axis (0 to 1) the values span, p5 to p95, as drawn."""
    axes = figure.axes[0]
    lo, hi = np.percentile(values, [5, 95])
    index = 1 if axis == "y" else 0
    ends = [axes.transData.transform((v, v))[index] for v in (lo, hi)]
    size = axes.bbox.height if axis == "y" else axes.bbox.width
    return abs(ends[1] - ends[0]) / size


def test_an_outlier_does_not_flatten_the_latency_of_the_rest() -> None:
    rows = skewed_rows()
    jobs = summary.records(rows)
    by_group = summary.samples(jobs, "latency")
    ordinary = [j.value("latency") for j in jobs if j.job_id != "stuck"]
    figure = latency_figure(by_group)
    assert figure is not None
    assert figure.axes[0].get_yscale() == "log"
    # on a linear axis up to ~1,000 s the ordinary jobs' p5..p95 (about 2 to 6 s) is under 1% of the height
    assert spread(figure, "y", ordinary) > 0.1
    assert tick_texts(figure.axes[0].yaxis) == ["1 s", "10 s", "1 min", "10 min"]


def test_an_outlier_does_not_put_every_other_wait_in_one_bin() -> None:
    jobs = summary.records(skewed_rows())
    waits = [v for vs in summary.samples(jobs, "wait").values() for v in vs]
    ordinary = sorted(waits)[:-1]
    figure = wait_figure(waits)
    assert figure is not None
    axes = figure.axes[0]
    assert axes.get_xscale() == "log"
    bins = [(bar.get_x(), bar.get_x() + bar.get_width()) for bar in axes.patches]
    counts = [sum(1 for w in ordinary if lo <= w < hi) for lo, hi in bins]
    assert sum(counts) == len(ordinary) and sum(1 for n in counts if n) >= 4 and max(counts) <= len(ordinary) / 2
    labels = tick_texts(axes.xaxis)
    assert "1 s" in labels and "1 min" in labels and "10 min" in labels


@pytest.mark.parametrize("seconds, text", [(0.1, "0.1 s"), (1, "1 s"), (30, "30 s"), (60, "1 min"),
                                           (600, "10 min"), (5400, "1.5 h"), (172800, "2 d")])
def test_duration_ticks_read_as_durations(seconds: float, text: str) -> None:
    assert duration_label(seconds) == text


def test_a_narrow_range_still_gets_named_ticks() -> None:
    figure = latency_figure({"64x64 4 steps": [1.1, 1.3, 1.2, 1.8]})
    assert figure is not None
    labels = tick_texts(figure.axes[0].yaxis)
    assert len(labels) >= 2 and all(re.fullmatch(r"[\d.]+ (s|min)", text) for text in labels), labels


def test_time_axes_read_as_iso_dates() -> None:
    report = summary.build(skewed_rows(), T0, T0 + 3600)
    figure = throughput_figure(report["throughput"])
    assert figure is not None
    labels = tick_texts(figure.axes[0].xaxis)
    assert labels and all(ISO.match(text) for text in labels), labels
    assert labels[0].startswith("2026-11-18 11:")  # T0 is 2026-11-18T11:07:00Z


def monitor_points() -> list[dict[str, Any]]:
    """Three minutes of `metrics.history` as a CPU box answers it (no GPU; torch figures absent)."""
    points = []
    for i, rss in enumerate((480e6, 520e6, 505e6)):
        ts = T0 + 60 * i
        points.append({"host": {"memory": {"used": 6.1e9, "total": 16e9, "percent": 38.1}},
                       "daemon": {"rss": 101e6, "cpu_percent": 1.0}, "worker": {"rss": rss - 4e6},
                       "ts": ts, "time": summary.rfc3339(ts), "step": 60, "n": 60,
                       "min": {"worker.rss": rss - 9e6, "host.memory.used": 6.0e9, "daemon.rss": 100e6},
                       "max": {"worker.rss": rss, "host.memory.used": 6.2e9, "daemon.rss": 102e6,
                               "host.memory.percent": 39.0}})
    return points


def test_memory_history_takes_the_peaks_of_the_memory_series() -> None:
    shaped = history.shape(monitor_points(), 60)
    assert shaped["series"] == ["worker_rss", "daemon_rss", "host_memory_used"] and shaped["unavailable"] is None
    assert [p["worker_rss"] for p in shaped["points"]] == [480_000_000, 520_000_000, 505_000_000]
    with_gpu = monitor_points()
    with_gpu[0]["max"]["gpus.0.memory.used"] = 3e9
    assert history.shape(with_gpu, 60)["series"][-1] == "gpu0_memory_used"
    assert history.shape([], 60)["unavailable"] == history.NONE_KEPT
    assert history.history_step(T0, T0 + 86400, None) == 1800 and history.history_step(T0, T0 + 600, 30) == 60


def test_memory_chart_and_tables_show_the_history(tmp_path) -> None:
    rows = [row(f"j{i}", i * 30, i * 30 + 1, i * 30 + 4, rss=500_000_000 + i * 1_000_000, peak=20_000_000,
                batch_images=1) for i in range(6)]
    report = summary.build(rows, T0, T0 + 600, memory_history=history.shape(monitor_points(), 60))
    figure = memory_figure(report["memory_history"], summary.records(rows))
    assert figure is not None
    axes = figure.axes[0]
    assert [line.get_label() for line in axes.get_lines()] == ["worker RSS", "daemon RSS", "host memory in use"]
    assert all(ISO.match(text) for text in tick_texts(axes.xaxis))
    assert axes.get_ylabel() == "memory (GiB)" and "5" in tick_texts(axes.yaxis)  # host memory: 6.2e9 B, 5.8 GiB
    text = render.markdown(report)
    assert "## Memory over time (monitor, largest per 1 min bucket)" in text
    assert "| 2026-11-18T11:08:00.000Z | 495.9 MiB | 97.3 MiB | 5.8 GiB |" in text
    assert "memory_history,2026-11-18T11:07:00.000Z,worker_rss,480000000" in render.csv_text(report)
    written = report_charts(report, tmp_path)
    assert sorted(p.name for p in written) == ["latency.png", "memory.png", "queue_wait.png", "throughput.png"]
    with Image.open(tmp_path / "memory.png") as image:
        assert image.format == "PNG"


def test_a_report_without_monitor_history_says_so() -> None:
    report = summary.build(skewed_rows(), T0, T0 + 3600)
    assert "No memory figures: the monitor history was not asked for." in render.markdown(report)
    assert memory_figure(report["memory_history"], summary.records(skewed_rows())) is None
