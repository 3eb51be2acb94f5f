"""Leak detection: a straight line fitted to the worker's memory after each batch."""

from __future__ import annotations

import statistics
from collections import deque
from collections.abc import Mapping


def leak_figure(memory: Mapping[str, object]) -> float | None:
    """What leak detection fits from a worker's memory report: its RSS, plus torch's allocated device
    memory on CUDA (a leak of GPU memory never shows in the host RSS). None without an RSS."""
    rss = memory.get("rss")
    if not isinstance(rss, (int, float)):
        return None
    device = memory.get("torch_allocated")
    return float(rss) + (float(device) if isinstance(device, (int, float)) else 0.0)


class LeakDetector:
    """Reports a leak when memory after each batch grows faster than `slope_mb` MiB per batch
    over a full window. A one-off jump (a larger image) does not make a steady slope."""

    def __init__(self, window: int, slope_mb: float) -> None:
        self.window = window
        self.slope_mb = slope_mb
        self.samples: deque[float] = deque(maxlen=window)

    def add(self, rss_bytes: float | None) -> float | None:
        """Record one batch's memory; return the slope in MiB per batch once it is a leak."""
        if rss_bytes is None:
            return None
        self.samples.append(rss_bytes / 2**20)
        if len(self.samples) < self.window:
            return None
        slope = self.slope()
        return slope if slope > self.slope_mb else None

    def slope(self) -> float:
        if len(self.samples) < 2:
            return 0.0
        fit = statistics.linear_regression(range(len(self.samples)), list(self.samples))
        return fit.slope

    def reset(self) -> None:
        self.samples.clear()
