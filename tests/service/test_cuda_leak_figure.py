"""A worker leaking GPU memory is a leak too (issue 16 point 5): its host RSS stays flat while
torch's allocated device memory grows, and the detector fits both together."""

from __future__ import annotations

from daemon.worker.leak import LeakDetector, leak_figure

MIB = 2**20


def test_device_memory_growth_with_flat_rss_is_reported() -> None:
    detector = LeakDetector(window=4, slope_mb=20.0)
    slopes = [detector.add(leak_figure({"rss": 900 * MIB, "torch_allocated": (2000 + 256 * i) * MIB}))
              for i in range(4)]
    assert slopes[:3] == [None, None, None] and slopes[3] is not None and round(slopes[3]) == 256


def test_a_cpu_report_is_its_rss_and_no_rss_is_no_sample() -> None:
    assert leak_figure({"rss": 5 * MIB, "capacity": 10}) == 5 * MIB
    assert leak_figure({"torch_allocated": 5}) is None
