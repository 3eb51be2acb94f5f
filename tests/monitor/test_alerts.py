"""Alerts through a real Monitor: one alert for a hovering value, dedup, ack (who, persisted),
the `alert` topic, the audit callback, the API for other parts (raise_alert / clear)."""

from __future__ import annotations

from pathlib import Path

import pytest

from daemon.events import EventBus
from daemon.monitor.alerts import AlertNotFound
from daemon.timefmt import rfc3339
from tests.monitor.mon_helpers import AuditLog, Clock, sample, sampling_config

ALICE = {"uid": 1000, "user": "alice", "pid": 4242}


def drain(sub) -> list[tuple[str, dict]]:  # type: ignore[no-untyped-def]
    out = []
    while not sub.queue.empty():
        out.append(sub.queue.get_nowait())
    return out


async def test_a_value_oscillating_at_a_threshold_raises_exactly_one_alert_then_clears(open_monitor) -> None:
    clock = Clock()
    monitor, bus, audit = await open_monitor(sampling_config(alerts__clear_after_samples=2), clock=clock)
    sub = bus.subscribe({"alert"})
    for i in range(120):
        clock.advance(1)
        await monitor.evaluate(sample(clock.now, host_percent=90.3 if i % 2 else 89.7))
    alerts = await monitor.alerts.list("all")
    assert len(alerts) == 1
    alert = alerts[0]
    assert (alert["key"], alert["severity"], alert["state"], alert["count"]) == ("host_memory", "warning", "active", 1)
    assert alert["details"]["threshold"] == 90.0
    assert [data["kind"] for _, data in drain(sub)] == ["raised"]
    # Last seen follows the samples (held in memory, written when listed).
    assert alert["last_seen"] == rfc3339(clock.now) and alert["first_seen"] == rfc3339(clock.now - 118)
    # Back to 86% (within the 4.5-point margin): still raised. Twice at 85%: cleared.
    for value in (86.0, 86.0, 85.0):
        clock.advance(1)
        await monitor.evaluate(sample(clock.now, host_percent=value))
    assert (await monitor.alerts.list())[0]["state"] == "active"
    clock.advance(1)
    await monitor.evaluate(sample(clock.now, host_percent=85.0))
    assert await monitor.alerts.list() == []
    cleared = (await monitor.alerts.list("cleared"))[0]
    assert cleared["cleared_at"] is not None and "back to 85.00" in cleared["details"]["cleared"]
    assert [data["kind"] for _, data in drain(sub)] == ["cleared"]
    assert audit.actions() == ["alert.raise", "alert.clear"]
    assert audit.entries[0][0] is None and audit.entries[0][2] == f"alert:{alert['alert_id']}"


async def test_escalation_is_one_alert_whose_severity_changes(open_monitor) -> None:
    clock = Clock()
    monitor, bus, audit = await open_monitor(sampling_config(alerts__clear_after_samples=1), clock=clock)
    sub = bus.subscribe({"alert"})
    for value in (92.0, 98.0, 91.0):
        clock.advance(1)
        await monitor.evaluate(sample(clock.now, host_percent=value))
    (alert,) = await monitor.alerts.list("all")
    assert (alert["severity"], alert["count"]) == ("warning", 1)
    assert [d["kind"] for _, d in drain(sub)] == ["raised", "escalated", "relaxed"]
    assert audit.actions() == ["alert.raise", "alert.raise"]


async def test_raise_alert_deduplicates_with_count_and_last_seen(open_monitor) -> None:
    clock = Clock()
    monitor, bus, audit = await open_monitor(clock=clock)
    sub = bus.subscribe({"alert"})
    first = await monitor.alerts.raise_alert("worker.crash", "critical", "worker exited with -9", {"exit": -9})
    clock.advance(5)
    again = await monitor.alerts.raise_alert("worker.crash", "critical", "worker exited with -11", {"exit": -11})
    assert again["alert_id"] == first["alert_id"]
    assert again["count"] == 2 and again["first_seen"] == first["first_seen"]
    assert again["last_seen"] > first["last_seen"] and again["details"] == {"exit": -11}
    assert [d["kind"] for _, d in drain(sub)] == ["raised", "repeated"]
    assert audit.actions() == ["alert.raise"]  # a repeat is counted, not audited again
    cleared = await monitor.alerts.clear("worker.crash")
    assert cleared is not None and cleared["state"] == "cleared"
    assert await monitor.alerts.clear("worker.crash") is None
    fresh = await monitor.alerts.raise_alert("worker.crash", "warning", "worker exited with -9")
    assert fresh["alert_id"] != first["alert_id"] and fresh["count"] == 1
    with pytest.raises(ValueError):
        await monitor.alerts.raise_alert("x", "fatal", "no such severity")


async def test_ack_records_who_is_audited_streamed_and_survives_reopen(open_monitor, tmp_path: Path) -> None:
    monitor, bus, audit = await open_monitor(state_dir=tmp_path / "s")
    sub = bus.subscribe({"alert"})
    raised = await monitor.alerts.raise_alert("worker.leak", "warning", "worker memory grows 40 MiB per job")
    acked = await monitor.alerts.ack(raised["alert_id"], ALICE)
    assert acked["state"] == "acked" and acked["acked"] and acked["acked_by"] == ALICE
    assert [d["kind"] for _, d in drain(sub)] == ["raised", "acked"]
    assert audit.entries[-1][:3] == (ALICE, "alert.ack", f"alert:{raised['alert_id']}")
    assert (await monitor.alerts.ack(raised["alert_id"], {"uid": 1, "user": "bob", "pid": 1}))["acked_by"] == ALICE
    with pytest.raises(AlertNotFound):
        await monitor.alerts.ack(999, ALICE)
    await monitor.close()

    reopened, _, _ = await open_monitor(state_dir=tmp_path / "s")
    (alert,) = await reopened.alerts.list("acked")
    assert alert["alert_id"] == raised["alert_id"] and alert["acked_by"] == ALICE and alert["acked_at"]
    assert await reopened.alerts.list("active") == []
    # Raised again while acked: counted, stays acked; a higher severity re-opens it.
    again = await reopened.alerts.raise_alert("worker.leak", "warning", "still growing")
    assert (again["state"], again["count"]) == ("acked", 2)
    worse = await reopened.alerts.raise_alert("worker.leak", "critical", "growing fast")
    assert (worse["state"], worse["acked_by"]) == ("active", None)


async def test_a_rule_alert_open_at_shutdown_is_not_raised_again_after_reopen(open_monitor, tmp_path: Path) -> None:
    clock = Clock()
    cfg = sampling_config(alerts__clear_after_samples=1)
    monitor, _, audit = await open_monitor(cfg, state_dir=tmp_path / "s", clock=clock)
    await monitor.evaluate(sample(clock.now, host_percent=95.0))
    await monitor.close()
    reopened, _, audit2 = await open_monitor(cfg, state_dir=tmp_path / "s", clock=clock)
    clock.advance(1)
    await reopened.evaluate(sample(clock.now, host_percent=95.0))
    assert audit2.actions() == [] and len(await reopened.alerts.list("all")) == 1
    clock.advance(1)
    await reopened.evaluate(sample(clock.now, host_percent=50.0))
    assert audit2.actions() == ["alert.clear"]
    # A rule turned off in the configuration clears its alert at the next open.
    await reopened.evaluate(sample(clock.now, host_percent=95.0))
    await reopened.close()
    off = sampling_config(alerts__host_memory_warning_percent=0.0, alerts__host_memory_critical_percent=0.0)
    third, _, audit3 = await open_monitor(off, state_dir=tmp_path / "s", clock=clock)
    assert audit3.actions() == ["alert.clear"] and await third.alerts.list() == []


async def test_list_filters_limit_and_until(open_monitor) -> None:
    clock = Clock()
    monitor, _, _ = await open_monitor(clock=clock)
    ids = []
    for i in range(5):
        clock.advance(10)
        ids.append((await monitor.alerts.raise_alert(f"k{i}", "warning", f"alert {i}"))["alert_id"])
    clock.advance(10)
    await monitor.alerts.clear("k0")
    await monitor.alerts.ack(ids[1], ALICE)
    assert [a["alert_id"] for a in await monitor.alerts.list()] == ids[:0:-1]
    assert [a["alert_id"] for a in await monitor.alerts.list("active")] == [ids[4], ids[3], ids[2]]
    assert [a["alert_id"] for a in await monitor.alerts.list("cleared")] == [ids[0]]
    assert len(await monitor.alerts.list("all", limit=2)) == 2
    # Open at a moment before k3 was raised: k0 (cleared later), k1, k2.
    at = clock.now - 25
    assert sorted(a["alert_id"] for a in await monitor.alerts.list("all", until=at)) == ids[:3]
    assert monitor.alerts.counts["active"] == 3 and monitor.alerts.counts["acked"] == 1


async def test_alert_events_reach_a_subscriber_only_of_that_topic(open_monitor) -> None:
    bus = EventBus()
    metrics_only = bus.subscribe({"metrics"})
    alerts_only = bus.subscribe({"alert"})
    monitor, _, _ = await open_monitor(bus=bus, audit=AuditLog())
    await monitor.alerts.raise_alert("disk.io", "critical", "write failed")
    topic, data = await alerts_only.get()  # type: ignore[misc]
    assert topic == "alert" and data["kind"] == "raised" and data["alert"]["message"] == "write failed"
    assert metrics_only.queue.empty()


async def test_an_audit_callback_that_fails_does_not_stop_alerts(open_monitor) -> None:
    async def broken(*_: object) -> None:
        raise RuntimeError("audit log is read-only")

    monitor, _, _ = await open_monitor(audit=broken)  # type: ignore[arg-type]
    alert = await monitor.alerts.raise_alert("x", "warning", "still recorded")
    assert (await monitor.alerts.list())[0]["alert_id"] == alert["alert_id"]


async def test_cleared_alerts_past_retention_are_pruned(open_monitor, tmp_path: Path) -> None:
    clock = Clock()
    cfg = sampling_config(alerts__retain_days=30.0)
    monitor, _, _ = await open_monitor(cfg, state_dir=tmp_path / "s", clock=clock)
    await monitor.alerts.raise_alert("old", "warning", "cleared long ago")
    await monitor.alerts.clear("old")
    await monitor.alerts.raise_alert("open", "warning", "still open")
    await monitor.close()
    clock.advance(31 * 86400)
    reopened, _, _ = await open_monitor(cfg, state_dir=tmp_path / "s", clock=clock)
    assert [a["key"] for a in await reopened.alerts.list("all")] == ["open"]
