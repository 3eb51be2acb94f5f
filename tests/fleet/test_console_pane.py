"""The console of a fleet member, driven by Pilot against real daemons on one PostgreSQL: the fleet
pane lists every box with its heartbeat, memory and alerts; the queue pane shows the fleet's jobs
with the box that ran each; a box that stops heartbeating is marked stale. A single box's console
has no fleet pane, no fifth pane key and no box column."""

from __future__ import annotations

import os
import signal
from typing import Any

from console.app import SaiConsole
from console.screens.help import HelpScreen
from console.screens.main import SINGLE_BOX
from console.widgets.fleet_pane import FleetPane, FleetTable
from tests.conftest import DaemonFactory
from tests.console.console_helpers import connected, fleet_row, notifications, screen_line, screen_text, until
from tests.fleet.conftest import member_config
from tests.harness import merged

SIZE = (160, 50)


def box_row(app: SaiConsole, name: str) -> str:
    table = app.main.fleet.query_one(FleetTable)
    if name not in {str(box["name"]) for box in table.boxes}:
        return ""
    return " ".join(str(cell) for cell in table.get_row(name))


async def test_a_members_console_sees_every_box_and_the_fleets_queue(
        make_daemon: DaemonFactory, client_of: Any, fleet_url: str, prompt_key_file: str) -> None:
    a = make_daemon(member_config(fleet_url, "box-a", prompt_key_file, heartbeat_seconds=1.0))
    b = make_daemon(merged(member_config(fleet_url, "box-b", prompt_key_file, heartbeat_seconds=1.0),
                           {"alerts": {"host_memory_warning_percent": 1.0}}))  # box-b has an open alert
    client_a = await client_of(a)
    await client_a.call("queue.pause")  # box-a's workers claim nothing: box-b runs the job submitted on box-a
    job_id = (await client_a.call("job.submit", prompt="a lighthouse submitted on box a"))["job_id"]

    app = SaiConsole(str(a.socket))
    async with app.run_test(size=SIZE) as pilot:
        await connected(pilot, app)
        main = app.main
        await until(pilot, lambda: main.in_fleet and box_row(app, "box-a") and box_row(app, "box-b"), 30,
                    "both boxes in the pane")
        assert main.fleet.display
        await until(pilot, lambda: all("host" in box_row(app, n) and " ago" in box_row(app, n) for n in ("box-a", "box-b")),
                    30, "both heartbeats fresh, with memory")  # stale after 3 s: this machine may be loaded
        await pilot.pause(0.3)
        for name in ("box-a", "box-b"):
            line = fleet_row(app, name)
            assert name in line and " ago" in line and "stale" not in line, line
            assert "cpu0 (cpu)" in line and "1 free" in line and "host" in line and "GiB" in line, line
        assert "box-a (this)" in fleet_row(app, "box-a") and "(this)" not in fleet_row(app, "box-b")
        assert "2 boxes" in str(main.fleet.border_title)
        await until(pilot, lambda: "1 warn" in box_row(app, "box-b"), 30, "box-b's open alert")
        assert "none" in box_row(app, "box-a")

        # the job box-b ran, seen from box-a's console, with box-b in the queue's box column
        table = main.table
        await until(pilot, lambda: table.jobs.get(job_id, {}).get("state") == "succeeded", 180,
                    "the job to succeed on box-b")
        assert table.jobs[job_id]["box"] == "box-b"
        await pilot.pause(0.3)
        line = screen_line(app, job_id)
        assert "box-b" in line and "succeeded" in line, line
        assert "box" in screen_line(app, "prompt · row").split()  # the column's header

        # the fifth pane: its key, tab, and the help
        await pilot.press("5")
        assert main.active == 5 and main.fleet.query_one(FleetTable).has_focus
        await pilot.press("tab")
        assert main.active == 1
        await pilot.press("shift+tab")
        assert main.active == 5
        await pilot.press("question_mark")
        assert isinstance(app.screen, HelpScreen)
        assert "Jump to the fleet's boxes" in screen_text(app)
        await pilot.press("escape")
        await pilot.resize_terminal(100, 30)  # one pane at a time: the bar names the fifth
        await pilot.press("5")
        await pilot.pause(0.3)
        assert main.fleet.region.height > 0 and main.query_one("#queue").region.height == 0
        assert "5 Fleet" in screen_text(app)
        await pilot.resize_terminal(*SIZE)

        # box-b stopped (SIGSTOP): its heartbeat ages and the pane marks it stale, then fresh again
        assert b.proc is not None
        os.kill(b.proc.pid, signal.SIGSTOP)
        try:
            await until(pilot, lambda: "stale" in box_row(app, "box-b"), 30, "box-b marked stale")
            await pilot.pause(0.3)
            assert "‼" in fleet_row(app, "box-b") and "stale" in fleet_row(app, "box-b")
            assert "stale" not in box_row(app, "box-a")
            assert "1 stale" in str(main.fleet.border_title)
        finally:
            os.kill(b.proc.pid, signal.SIGCONT)
        await until(pilot, lambda: "ago" in box_row(app, "box-b"), 30, "box-b fresh again")


async def test_every_job_another_box_finished_is_shown_finished_however_many_were_queued(
        make_daemon: DaemonFactory, client_of: Any, fleet_url: str, prompt_key_file: str) -> None:
    paused = {"queue": {"start_paused": True, "burst": 1000}}  # 130 submits at once: no rate limit
    a = make_daemon(merged(member_config(fleet_url, "box-a", prompt_key_file, heartbeat_seconds=1.0), paused))
    b = make_daemon(merged(member_config(fleet_url, "box-b", prompt_key_file, heartbeat_seconds=1.0), paused))
    client_a, client_b = await client_of(a), await client_of(b)
    ids = [(await client_a.call("job.submit", prompt=f"gull {i}", width=64, height=64, steps=2))["job_id"]
           for i in range(130)]  # more than the 100 jobs the pane lists at a refresh

    app = SaiConsole(str(a.socket))
    async with app.run_test(size=SIZE) as pilot:
        await connected(pilot, app)
        table = app.main.table
        await until(pilot, lambda: app.main.in_fleet and all(job_id in table.jobs for job_id in ids), 30,
                    "the 130 queued jobs in the queue pane")
        await client_b.call("queue.resume")  # box-b runs them all; box-a's console hears none of its events

        def finished() -> int:
            return sum(1 for job_id in ids if table.jobs[job_id].get("state") == "succeeded")

        await until(pilot, lambda: finished() == len(ids), 240, "every job shown succeeded")
        await until(pilot, lambda: (app.main.header.queue.get("queued"), app.main.header.queue.get("running")) == (0, 0),
                    10, "the header's counts at 0 queued, 0 running")


async def test_a_single_boxs_console_has_no_fleet(make_daemon: DaemonFactory) -> None:
    daemon = make_daemon()
    app = SaiConsole(str(daemon.socket))
    async with app.run_test(size=SIZE) as pilot:
        await connected(pilot, app)
        main = app.main
        await pilot.pause(1.0)
        pane = main.query_one(FleetPane)
        assert not main.in_fleet and not pane.joined and pane.region.height == 0
        assert main.table.boxes is False and "box" not in screen_line(app, "prompt · row").split()
        await pilot.press("5")
        assert main.active == 1
        await pilot.press("tab", "tab", "tab", "tab")
        assert main.active == 1  # four panes, as before
        await pilot.press("colon", *"fleet", "enter")
        await until(pilot, lambda: SINGLE_BOX in notifications(app), 5, "the single-box answer")
        await pilot.press("question_mark")
        assert "Jump to the fleet's boxes" not in screen_text(app)
