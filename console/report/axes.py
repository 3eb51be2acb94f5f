"""Axis scales and labels for the report's charts: seconds on a log scale, ISO 8601 dates, bytes.

Durations of jobs are skewed: most take seconds, a few (a cold start, a long queue) take many
minutes. On a linear axis one 1,000 s outlier squeezes every other job into a sliver at the bottom,
so duration axes are logarithmic, with ticks at durations a reader can name (1 s, 10 s, 1 min,
10 min, 1 h). Time axes read as ISO 8601 in UTC (2026-12-05 14:00), never as month-day or epoch
seconds. Only the chart functions import this module, so matplotlib stays out of plain reports.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from datetime import UTC

from matplotlib.axis import Axis
from matplotlib.dates import AutoDateLocator, DateFormatter
from matplotlib.ticker import FixedLocator, FuncFormatter, NullFormatter

FLOOR = 0.001
"""Durations below a millisecond (or zero) are drawn at a millisecond: a log axis has no zero."""

NICE = (0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1, 2, 5, 10, 20, 30, 60, 120, 300, 600, 1200, 1800,
        3600, 7200, 10800, 21600, 43200, 86400, 172800, 604800)
"""Durations with short names, for ticks when the data spans little."""
MAJOR = (0.001, 0.01, 0.1, 1, 10, 60, 600, 3600, 36000, 86400, 864000)
"""Roughly one tick a decade, each a duration with a short name."""
MIN_TICKS = 3


def duration_label(seconds: float) -> str:
    """0.1 s, 30 s, 1 min, 10 min, 1.5 h, 2 d."""
    for size, unit in ((86400, "d"), (3600, "h"), (60, "min")):
        if seconds >= size:
            return f"{seconds / size:g} {unit}"
    return f"{seconds:g} s"


def clip(values: Sequence[float]) -> list[float]:
    return [max(FLOOR, v) for v in values]


def duration_range(values: Sequence[float]) -> tuple[float, float]:
    """Axis limits around `values` (a little padding on a log scale), widened to durations with
    names so that at least two ticks always show."""
    lo, hi = min(clip(values)) / 1.2, max(clip(values)) * 1.2
    lo = max((t for t in NICE if t <= lo), default=FLOOR)
    hi = min((t for t in NICE if t >= hi), default=hi)
    return lo, hi


def duration_ticks(lo: float, hi: float) -> list[float]:
    """About one named duration per decade between `lo` and `hi`; more when that is too few."""
    major = [t for t in MAJOR if lo <= t <= hi]
    return major if len(major) >= MIN_TICKS else [t for t in NICE if lo <= t <= hi]


def log_seconds(axis: Axis, values: Sequence[float]) -> tuple[float, float]:
    """Put `axis` (an x or y axis) on a log scale fitted to `values` (seconds), with named ticks;
    returns its limits."""
    lo, hi = duration_range(values)
    axes = axis.axes
    if axis is axes.yaxis:
        axes.set_yscale("log")
        axes.set_ylim(lo, hi)
    else:
        axes.set_xscale("log")
        axes.set_xlim(lo, hi)
    axis.set_major_locator(FixedLocator(duration_ticks(lo, hi)))
    axis.set_major_formatter(FuncFormatter(lambda value, _: duration_label(value)))
    axis.set_minor_formatter(NullFormatter())
    return lo, hi


def log_bins(lo: float, hi: float, per_decade: int = 8) -> list[float]:
    """Histogram edges evenly spaced on a log scale between `lo` and `hi`."""
    count = max(5, min(40, math.ceil(math.log10(hi / lo) * per_decade)))
    return [lo * (hi / lo) ** (i / count) for i in range(count + 1)]


def iso_dates(axis: Axis, span_seconds: float) -> None:
    """Dates on `axis` as ISO 8601 in UTC: 2026-12-05 14:00 (with seconds when the span is short)."""
    axis.set_major_locator(AutoDateLocator(tz=UTC, minticks=3, maxticks=8))
    pattern = "%Y-%m-%d %H:%M:%S" if span_seconds < 600 else "%Y-%m-%d %H:%M"
    axis.set_major_formatter(DateFormatter(pattern, tz=UTC))


def byte_unit(largest: float) -> tuple[int, str]:
    """The binary unit to draw bytes in, so that ticks fall on round numbers of it (1.5 GiB, not 953.7 MiB)."""
    for size, unit in ((1 << 40, "TiB"), (1 << 30, "GiB"), (1 << 20, "MiB"), (1 << 10, "KiB")):
        if largest >= 2 * size:
            return size, unit
    return 1, "B"


def tick_texts(axis: Axis) -> list[str]:
    """The labels `axis` shows once drawn (for tests and for checking a chart by eye)."""
    axis.axes.figure.canvas.draw()
    return [label.get_text() for label in axis.get_ticklabels() if label.get_text() and label.get_visible()]

