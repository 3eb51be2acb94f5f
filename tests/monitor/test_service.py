"""The Monitor running: samples on its timer into the ring, the `metrics` topic only when followed,
the worker's figures by pid and from its memory report, queue wait and failure-rate rules."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time

from tests.monitor.mon_helpers import Clock, sampling_config


async def test_samples_on_its_timer_into_a_bounded_ring(open_monitor) -> None:
    cfg = sampling_config(monitor__interval=0.02, monitor__ring_seconds=0.2)
    monitor, bus, _ = await open_monitor(cfg)
    assert monitor.ring.capacity == 10
    monitor.start()
    await asyncio.sleep(0.5)
    assert len(monitor.ring) == 10
    stamps = [s["ts"] for s in monitor.ring.since()]
    assert stamps == sorted(stamps) and stamps[-1] - stamps[0] < 0.4
    assert bus.published == 0  # nobody follows `metrics`: nothing is published
    sub = bus.subscribe({"metrics"})
    topic, data = await asyncio.wait_for(sub.get(), 2)  # type: ignore[misc]
    assert topic == "metrics" and data["host"]["memory"]["total"] > 0 and data["time"].endswith("Z")
    await monitor.close()
    count = len(monitor.ring.since())
    await asyncio.sleep(0.1)
    assert len(monitor.ring.since()) == count  # stopped


async def test_disabled_monitor_takes_no_samples_but_answers_a_snapshot(open_monitor) -> None:
    monitor, _, _ = await open_monitor(sampling_config(monitor__enabled=False, monitor__interval=0.01))
    monitor.start()
    await asyncio.sleep(0.1)
    assert len(monitor.ring) == 0
    snap = await monitor.snapshot()
    assert snap["enabled"] is False and snap["host"]["memory"]["total"] > 0 and snap["history"]["ts"] == []


async def test_worker_figures_come_from_its_pid_and_its_memory_report(open_monitor) -> None:
    child = subprocess.Popen([sys.executable, "-c", "x = bytearray(64 * 1024 * 1024); import time; time.sleep(30)"])
    try:
        report = {"rss": 1, "torch_allocated": 1000, "torch_reserved": 2000, "torch_peak": 3000, "extra": "ignored"}
        monitor, _, _ = await open_monitor(worker_pid=lambda: child.pid, worker_memory=lambda: report)
        deadline = time.monotonic() + 10
        while True:
            sample = await monitor.tick()
            if (sample["worker"]["rss"] or 0) > 64 * 1024 * 1024 or time.monotonic() > deadline:
                break
            await asyncio.sleep(0.05)
        worker = sample["worker"]
        assert worker["pid"] == child.pid and worker["rss"] > 64 * 1024 * 1024
        assert (worker["torch_allocated"], worker["torch_reserved"], worker["torch_peak"]) == (1000, 2000, 3000)
        assert worker["device_free"] is None and "extra" not in worker
    finally:
        child.kill()
        child.wait()
    sample = await monitor.tick()  # the worker is gone: no figures, no error
    assert sample["worker"]["rss"] is None


async def test_queue_wait_rule_with_an_async_source(open_monitor) -> None:
    waits = iter([10.0, 1000.0, 4000.0, None])

    async def queue_wait() -> float | None:
        return next(waits)

    monitor, _, audit = await open_monitor(sampling_config(alerts__clear_after_samples=1), queue_wait=queue_wait)
    severities = []
    for _ in range(4):
        sample = await monitor.tick()
        alerts = await monitor.alerts.list()
        severities.append((sample["queue"]["wait_seconds"], alerts[0]["severity"] if alerts else None))
    assert severities == [(10.0, None), (1000.0, "warning"), (4000.0, "critical"), (None, None)]
    assert audit.actions() == ["alert.raise", "alert.raise", "alert.clear"]


async def test_failure_rate_needs_enough_jobs_in_the_window(open_monitor) -> None:
    clock = Clock()
    monitor, _, _ = await open_monitor(sampling_config(alerts__failure_rate_min_jobs=4), clock=clock)
    for ok in (False, False, True):
        monitor.record_job_outcome(ok)
    assert monitor.job_summary()["failure_rate_percent"] is None  # 3 < 4 jobs
    monitor.record_job_outcome(True)
    sample = await monitor.tick()
    assert sample["jobs"] == {"finished": 4, "failed": 2, "failure_rate_percent": 50.0, "window_seconds": 900.0}
    (alert,) = await monitor.alerts.list()
    assert (alert["key"], alert["severity"]) == ("failure_rate", "critical")
    clock.advance(901)  # the outcomes age out of the window
    for _ in range(monitor.limits.clear_after_samples):
        await monitor.tick()
    assert await monitor.alerts.list() == []


async def test_snapshot_carries_the_ring_as_columns(open_monitor) -> None:
    clock = Clock()
    monitor, _, _ = await open_monitor(clock=clock)
    for _ in range(3):
        clock.advance(1)
        await monitor.tick()
    snap = await monitor.snapshot()
    history = snap["history"]
    assert history["ts"] == [clock.now - 2, clock.now - 1, clock.now]
    assert len(history["series"]["host.memory.percent"]) == 3
    assert "host.memory.total" not in history["series"]  # constant: the sample itself carries it
    assert snap["ts"] == clock.now and snap["alerts"]["active"] == 0
    assert (await monitor.snapshot(1.0))["history"]["ts"] == [clock.now - 1, clock.now]
    assert (await monitor.snapshot(0))["history"]["ts"] == []


async def test_a_broken_source_is_logged_and_sampling_goes_on(open_monitor, caplog) -> None:
    calls = {"n": 0}

    def flaky() -> int | None:
        calls["n"] += 1
        if calls["n"] == 2:
            raise RuntimeError("supervisor in an odd state")
        return None

    monitor, _, _ = await open_monitor(sampling_config(monitor__interval=0.02), worker_pid=flaky)
    monitor.start()
    await asyncio.sleep(0.3)
    assert monitor.errors == 1 and len(monitor.ring) >= 5
    assert "monitor sample failed" in caplog.text
