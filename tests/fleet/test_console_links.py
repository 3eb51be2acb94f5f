"""A fleet member's console attached to the other boxes its client config maps ([fleet] sockets),
driven by Pilot against real daemons on one PostgreSQL: the fleet pane says per box whether the
console is attached; a job another box runs moves live through that box's link; that box's alerts are
shown named by it and acknowledged on it; a box that hangs, or a socket that reaches another box than
its key says, is shown in the pane while the console goes on with the box it is attached to."""

from __future__ import annotations

import os
import signal
from typing import Any

from textual.message import Message

from console.app import SaiConsole
from console.connection import JobChanged, JobProgress
from console.screens.job_detail import JobDetailScreen
from console.widgets.alerts_pane import AlertsTable
from console.widgets.fleet_pane import FleetTable
from tests.conftest import DaemonFactory
from tests.console.console_helpers import connected, fleet_row, screen_line, screen_text, until
from tests.fleet.conftest import member_config
from tests.harness import merged

SIZE = (170, 50)


def link_of(app: SaiConsole, name: str) -> str:
    """The fleet pane's `link` cell of box `name` ("" while the pane does not list it)."""
    table = app.main.fleet.query_one(FleetTable)
    if name not in {str(box["name"]) for box in table.boxes} or "link" not in table.columns:
        return ""
    return str(table.get_cell(name, "link"))


async def test_another_boxs_jobs_and_alerts_come_through_its_link(
        make_daemon: DaemonFactory, client_of: Any, fleet_url: str, prompt_key_file: str) -> None:
    a = make_daemon(member_config(fleet_url, "box-a", prompt_key_file, heartbeat_seconds=1.0))
    b = make_daemon(merged(member_config(fleet_url, "box-b", prompt_key_file, heartbeat_seconds=1.0),
                           {"alerts": {"host_memory_warning_percent": 1.0}}))  # box-b has an open alert
    client_a, client_b = await client_of(a), await client_of(b)
    await client_a.call("queue.pause")  # box-b runs what is submitted on box-a
    from_b: list[Message] = []

    def hook(message: Message) -> None:
        if isinstance(message, (JobChanged, JobProgress)) and message.box == "box-b":
            from_b.append(message)

    app = SaiConsole(str(a.socket), fleet_sockets={"box-b": str(b.socket)})
    async with app.run_test(size=SIZE, message_hook=hook) as pilot:
        await connected(pilot, app)
        await until(pilot, lambda: link_of(app, "box-b") == "attached", 30, "box-b attached")
        assert link_of(app, "box-a") == "this"
        await pilot.pause(0.3)
        assert "attached" in fleet_row(app, "box-b") and "this" in fleet_row(app, "box-a (this)")

        # the job box-b runs: its progress and outcome come through box-b's link, live
        job_id = (await client_a.call("job.submit", prompt="a lighthouse run by box b", steps=8))["job_id"]
        table = app.main.table
        await until(pilot, lambda: table.jobs.get(job_id, {}).get("state") == "succeeded", 120, "the job to succeed")
        progress = [m.progress for m in from_b if isinstance(m, JobProgress) and m.job_id == job_id]
        states = [m.job.get("state") for m in from_b if isinstance(m, JobChanged) and m.job.get("job_id") == job_id]
        assert progress and any(0.0 < p < 1.0 for p in progress), progress
        assert "running" in states and "succeeded" in states, states
        assert table.jobs[job_id]["box"] == "box-b"

        # its detail previews and verifies the image through box-b's link (box-a holds none of it) and
        # shows box-b's audit entries of it with box-a's
        await pilot.press("1", "enter")  # the only job
        detail = app.screen
        assert isinstance(detail, JobDetailScreen) and detail.job_id == job_id
        note = detail.query_one("#preview-note")
        await until(pilot, lambda: "decrypted in memory" in str(note.render()), 60, "the preview")
        await until(pilot, lambda: detail.verification.get(0, {}).get("ok") is True, 60, "the verification")
        actions = {(entry.get("box"), entry.get("action")) for entry in detail.audit_entries}
        assert {(None, "job.submit"), ("box-b", "job.start"), ("box-b", "job.finish")} <= actions, actions
        assert "box-b #" in screen_text(app)  # box-b's entries, in its own log's numbering
        await pilot.press("escape")

        # box-b's open alert, named box-b, acknowledged on box-b
        listed = (await client_b.call("alerts.list"))["alerts"]
        alert = next(item for item in listed if item["key"] == "host_memory")
        alerts = app.main.alerts
        key = f"box-b/{alert['alert_id']}"
        await until(pilot, lambda: key in alerts.alerts, 30, "box-b's alert in the pane")
        await pilot.press("3")
        alerts_table = alerts.query_one(AlertsTable)
        alerts_table.select_key(key)
        await pilot.pause(0.3)
        assert "box-b" in screen_line(app, "WARN", "host memory")
        await pilot.press("a")
        await until(pilot, lambda: alerts.alerts[key].get("acked") or alerts.alerts[key].get("state") == "acked",
                    10, "the alert shown acked")
        acked = {a["alert_id"]: a for a in (await client_b.call("alerts.list"))["alerts"]}
        assert acked[alert["alert_id"]]["state"] == "acked", acked[alert["alert_id"]]


async def test_a_box_that_hangs_or_a_socket_that_reaches_another_box_is_shown(
        make_daemon: DaemonFactory, client_of: Any, fleet_url: str, prompt_key_file: str) -> None:
    a = make_daemon(member_config(fleet_url, "box-a", prompt_key_file, heartbeat_seconds=1.0))
    b = make_daemon(member_config(fleet_url, "box-b", prompt_key_file, heartbeat_seconds=1.0))
    client_a = await client_of(a)
    await client_a.call("queue.pause")
    sockets = {"box-a": str(a.socket), "box-b": str(b.socket), "box-c": str(a.socket)}  # box-c's reaches box-a
    app = SaiConsole(str(a.socket), fleet_sockets=sockets)
    async with app.run_test(size=SIZE) as pilot:
        await connected(pilot, app)
        await until(pilot, lambda: link_of(app, "box-b") == "attached", 30, "box-b attached")
        links = app.main.fleet.links
        assert link_of(app, "box-a") == "this" and set(links.links) == {"box-b", "box-c"}  # its own box skipped
        await until(pilot, lambda: "reaches box 'box-a', not 'box-c'" in links.states["box-c"], 30, "box-c refused")
        await until(pilot, lambda: "not in the fleet's registry: box-c: down:" in screen_text(app).replace("\n", " "),
                    10, "box-c named under the table")

        assert b.proc is not None
        os.kill(b.proc.pid, signal.SIGSTOP)  # box-b hangs, its connection open: its link is found down
        try:
            await until(pilot, lambda: link_of(app, "box-b").startswith("down:"), 30, "box-b's link down")
            await pilot.pause(0.3)
            assert "down:" in fleet_row(app, "box-b")
            assert app.link is not None and app.link.connected and app.main.header.link == "up"
            job_id = (await client_a.call("job.submit", prompt="still seen on box a"))["job_id"]
            await until(pilot, lambda: app.main.table.jobs.get(job_id, {}).get("state") == "queued", 10,
                        "box-a's job through box-a's link")
            await pilot.press("3")
            assert app.main.alerts.loaded
        finally:
            os.kill(b.proc.pid, signal.SIGCONT)
        await until(pilot, lambda: link_of(app, "box-b") == "attached", 30, "box-b attached again")
