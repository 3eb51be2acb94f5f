"""Per-minute history in SQLite: aggregation, coarser steps, pruning past the retention, times
as epoch seconds or RFC 3339. Times come from an injected clock, never from sleeping."""

from __future__ import annotations

from pathlib import Path

import aiosqlite
import pytest

from daemon.monitor.history import History, flatten, nest, parse_time
from daemon.timefmt import rfc3339
from tests.monitor.mon_helpers import Clock, sample, sampling_config

T0 = 1_800_000_000.0  # a multiple of 60: minute boundaries are T0 + 60k


async def test_samples_are_aggregated_per_minute(open_monitor) -> None:
    clock = Clock(T0)
    monitor, _, _ = await open_monitor(clock=clock)
    store = monitor.history_store
    for second in range(120):  # two minutes: 10..69% then 70..129%
        await store.add(sample(T0 + second, host_percent=10.0 + second))
    result = await monitor.history(T0, T0 + 119, 60)
    points = result["samples"]
    assert [p["ts"] for p in points] == [T0, T0 + 60]
    assert points[0]["time"] == rfc3339(T0) and result["step"] == 60
    first, second = points
    assert first["host"]["memory"]["percent"] == pytest.approx(39.5)
    assert (first["min"]["host.memory.percent"], first["max"]["host.memory.percent"]) == (10.0, 69.0)
    assert second["host"]["memory"]["percent"] == pytest.approx(99.5) and first["n"] == 60
    # Coarser steps aggregate the minutes further (a 120 s bucket holds both).
    (both,) = (await monitor.history(T0, T0 + 119, 120))["samples"]
    assert both["host"]["memory"]["percent"] == pytest.approx(69.5)
    assert (both["min"]["host.memory.percent"], both["max"]["host.memory.percent"], both["n"]) == (10.0, 129.0, 120)


async def test_the_current_minute_is_included_and_merged_after_a_partial_write(open_monitor) -> None:
    monitor, _, _ = await open_monitor(clock=Clock(T0 + 30))
    store = monitor.history_store
    for second in range(10):
        await store.add(sample(T0 + second, host_percent=20.0))
    (point,) = (await monitor.history(T0, T0 + 59))["samples"]  # written so far: 10 samples
    assert point["n"] == 10
    for second in range(10, 20):
        await store.add(sample(T0 + second, host_percent=40.0))
    (point,) = (await monitor.history(T0, T0 + 59))["samples"]
    assert point["n"] == 20 and point["host"]["memory"]["percent"] == pytest.approx(30.0)


async def test_rows_older_than_the_retention_are_pruned(tmp_path: Path) -> None:
    clock = Clock(T0)
    async with aiosqlite.connect(tmp_path / "m.sqlite3") as db:
        store = await History.open(db, days=7, clock=clock)
        for day in range(10):  # one minute of data per day, days 0..9
            await store.add(sample(T0 + day * 86400, host_percent=float(day)))
            await store.flush()
        clock.now = T0 + 9 * 86400 + 30
        removed = await store.prune()
        points = await store.query(T0 - 60, clock.now, 60)
        assert [p["host"]["memory"]["percent"] for p in points] == [2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0, 9.0]
        assert removed > 0
        # Pruning also runs by itself, hourly, as samples arrive.
        clock.advance(86400)
        await store.add(sample(clock.now, host_percent=10.0))
        days = [p["host"]["memory"]["percent"] for p in await store.query(T0 - 60, clock.now, 60)]
        assert days[0] == 3.0


async def test_rfc3339_and_epoch_seconds_name_the_same_range(open_monitor) -> None:
    monitor, _, _ = await open_monitor(clock=Clock(T0 + 600))
    for second in range(0, 300, 5):
        await monitor.history_store.add(sample(T0 + second))
    by_epoch = await monitor.history(T0, T0 + 299, 60)
    by_text = await monitor.history(rfc3339(T0), rfc3339(T0 + 299), 60)
    assert by_epoch["samples"] == by_text["samples"] and len(by_epoch["samples"]) == 5
    default = await monitor.history()  # the hour up to now
    assert len(default["samples"]) == 5 and default["until"] == rfc3339(T0 + 600)


@pytest.mark.parametrize("since, until, step, message", [
    (T0, T0 + 60, 30, "multiple of 60"), (T0, T0 + 60, 90, "multiple of 60"),
    (T0 + 60, T0, 60, "before since"), (T0, T0 + 10 * 365 * 86400, 60, "more than"),
])
async def test_bad_ranges_are_refused(open_monitor, since: float, until: float, step: int, message: str) -> None:
    monitor, _, _ = await open_monitor()
    with pytest.raises(ValueError, match=message):
        await monitor.history(since, until, step)


def test_parse_time() -> None:
    assert parse_time(12) == 12.0 and parse_time("12.5") == 12.5
    assert parse_time("2027-01-15T08:00:00Z") == parse_time("2027-01-15T09:00:00+01:00") == 1800000000.0
    for bad in ("yesterday", True, float("nan")):
        with pytest.raises(ValueError):
            parse_time(bad)  # type: ignore[arg-type]


def test_flatten_and_nest_round_trip_the_numeric_figures() -> None:
    s = sample(T0, gpus=[{"index": 0, "name": "H100", "memory": {"used": 5.0, "total": 10.0}, "temperature": "n/a",
                          "processes": [{"pid": 1, "used_memory": 3}]}])
    flat = flatten(s)
    assert flat["gpus.0.memory.used"] == 5.0 and "gpus.0.temperature" not in flat and "ts" not in flat
    assert not any(name.startswith("gpus.0.processes") for name in flat)
    tree = nest(flat)
    assert tree["gpus"] == [{"index": 0, "memory": {"used": 5.0, "total": 10.0}}]
    assert tree["host"]["memory"]["percent"] == 50.0


async def test_history_days_comes_from_config(open_monitor) -> None:
    monitor, _, _ = await open_monitor(sampling_config(monitor__history_days=2.0))
    assert monitor.history_store.days == 2.0
