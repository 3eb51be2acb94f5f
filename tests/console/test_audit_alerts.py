"""Issue 20 point 7 in the console, against real daemons: the alerts pane keeps what cleared in the
last 24 h (dimmed, counted), and the audit filter searches the whole log, not the last page."""

from __future__ import annotations

import os
import signal
from typing import Any

from console.app import SaiConsole
from console.widgets import audit_pane
from console.widgets.alerts_pane import AlertsTable
from tests.configs import NO_WORKER
from tests.console.console_helpers import connected, screen_text, until

SIZE = (160, 50)


def crash_alerts(app: SaiConsole) -> list[dict[str, Any]]:
    return [a for a in app.main.alerts.alerts.values() if a.get("key") == "worker.crash"]


def counts_title(app: SaiConsole) -> str:
    alerts = list(app.main.alerts.alerts.values())
    cleared = sum(a.get("state") == "cleared" for a in alerts)
    return f"{app.main.alerts.open_count()} open, {cleared} cleared in 24 h, {len(alerts)} total"


async def test_a_worker_crash_alert_that_cleared_itself_stays_dimmed_and_counted(make_daemon: Any,
                                                                                client_of: Any) -> None:
    daemon = make_daemon()
    client = await client_of(daemon)
    await client.call("events.subscribe", topics=["job"])
    job_id = (await client.call("job.submit", prompt="survive", width=256, height=256, steps=40))["job_id"]
    while True:
        data = (await client.next_event(timeout=120))["data"]
        if data.get("job_id") == job_id and data.get("kind") == "progress":
            break
    app = SaiConsole(str(daemon.socket))
    async with app.run_test(size=SIZE) as pilot:
        await connected(pilot, app)
        [worker] = daemon.worker_pids()
        os.kill(worker, signal.SIGKILL)  # the daemon raises worker.crash, restarts the worker, clears it
        await until(pilot, lambda: [a for a in crash_alerts(app) if a.get("state") == "cleared"], 120,
                    "the crash alert raised, then cleared, live")
        assert counts_title(app) in str(app.main.alerts.border_title)
    late = SaiConsole(str(daemon.socket))  # an operator who opens the console after it cleared
    async with late.run_test(size=SIZE) as pilot:
        await connected(pilot, late)
        await until(pilot, lambda: crash_alerts(late), 10, "the cleared crash alert listed")
        [alert] = crash_alerts(late)
        assert alert["state"] == "cleared"
        title = str(late.main.alerts.border_title)
        assert counts_title(late) in title and " 0 cleared" not in title
        table = late.main.alerts.query_one(AlertsTable)
        mark, message, *_ = table.get_row(str(alert["alert_id"]))
        assert mark.plain == "○ WARN" and message.plain.startswith(f"{alert['message']} (cleared ")
        await until(pilot, lambda: "○ WARN  crashed" in screen_text(late), 10, "the cleared alert's row on screen")
        assert table.get_component_rich_style("alerts-table--cleared").dim


async def test_the_audit_filter_searches_the_whole_log_not_the_last_page(make_daemon: Any, client_of: Any) -> None:
    daemon = make_daemon(NO_WORKER)
    client = await client_of(daemon)
    await client.call("queue.resume")
    await client.call("queue.pause")
    await client.call("queue.resume")
    await client.call("queue.pause")
    job_id = (await client.call("job.submit", prompt="moved about"))["job_id"]
    for i in range(130):  # 260 entries: the two queue.pause are long out of the pane's first page
        await client.call("job.set_priority", job_id=job_id, priority="high")
        await client.call("job.set_priority", job_id=job_id, priority="low")
    everywhere = (await client.call("audit.tail", limit=1000, action="queue.pause"))["entries"]
    assert len(everywhere) == 2  # what `sai audit tail --action queue.pause` finds
    app = SaiConsole(str(daemon.socket))
    async with app.run_test(size=SIZE) as pilot:
        await connected(pilot, app)
        audit = app.main.audit
        await until(pilot, lambda: len(audit.entries) >= 200, 10, "the audit pane loaded")
        assert not [e for e in audit.entries if e["action"] == "queue.pause"]
        await pilot.press("4", "slash", *"queue.pause", "enter")
        table = audit.query_one("#audit-table")
        await until(pilot, lambda: "in the whole log" in str(audit.border_title), 20, "the whole-log search")
        assert table.row_count == 2
        assert [e["action"] for e in table.entries] == ["queue.pause", "queue.pause"]  # type: ignore[attr-defined]
        assert "2 match(es) in the whole log" in str(audit.border_title)
        await client.call("queue.resume")
        await client.call("queue.pause")  # a new match, live
        await until(pilot, lambda: table.row_count == 3, 10, "the live match added")


async def test_the_audit_pane_shows_each_new_checkpoint(make_daemon: Any, client_of: Any,
                                                        monkeypatch: Any) -> None:
    """Found by hand: the pane kept the checkpoint it read when it loaded (size 1) while the daemon
    signed newer ones every minute."""
    monkeypatch.setattr(audit_pane, "CHECKPOINT_REFRESH", 0.5)
    daemon = make_daemon({**NO_WORKER, "audit": {"checkpoint_every_seconds": 1.0}})
    client = await client_of(daemon)
    app = SaiConsole(str(daemon.socket))
    async with app.run_test(size=SIZE) as pilot:
        await connected(pilot, app)
        audit = app.main.audit
        await until(pilot, lambda: audit.checkpoint.startswith("size "), 10, "the first checkpoint shown")
        first = audit.checkpoint
        for _ in range(3):
            await client.call("queue.resume")
            await client.call("queue.pause")
        size = (await client.call("audit.tail", limit=1))["size"]
        await until(pilot, lambda: audit.checkpoint.startswith(f"size {size},"), 20,
                    f"a checkpoint of all {size} entries shown (was: {first})")
        assert f"checkpoint: size {size}," in screen_text(app)
