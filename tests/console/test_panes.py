"""The panes, help, the command line, the palette and look-back, against a real daemon."""

from __future__ import annotations

import asyncio
import re
import sqlite3
from typing import Any

import pytest
from textual.command import CommandPalette

from console.app import SaiConsole
from console.connection import AlertChanged, JobChanged, LinkDown, MetricsSample
from console.screens.help import HelpScreen
from console.screens.main import COMMANDS
from tests.configs import NO_WORKER
from tests.console.console_helpers import connected, notifications, offline_app, until

SIZE = (120, 40)


async def test_help_lists_every_binding(make_daemon: Any) -> None:
    app = SaiConsole(str(make_daemon(NO_WORKER).socket))
    async with app.run_test(size=SIZE) as pilot:
        await connected(pilot, app)
        await pilot.press("f1")
        assert isinstance(app.screen, HelpScreen)
        text = "\n".join(f"{keys} {words}" for _, rows in app.screen.groups for keys, words in rows)
        for command in COMMANDS:
            if command.keys and command.name != "fleet":  # a fleet member's key (tests/fleet/test_console_pane.py)
                assert command.help in text, command
        for words in ("Tag", "Sort", "First row", "Cancel job", "Next image", "Submit", "Command palette"):
            assert words in text, words
        await pilot.press("escape")
        assert app.screen is app.main


async def test_panes_by_number_and_tab(make_daemon: Any) -> None:
    app = SaiConsole(str(make_daemon(NO_WORKER).socket))
    async with app.run_test(size=(80, 24)) as pilot:
        await connected(pilot, app)
        main = app.main
        for key, pane in (("2", "memory"), ("3", "alerts"), ("4", "audit"), ("1", "queue")):
            await pilot.press(key)
            assert main.query_one(f"#{pane}").display and main.active == int(key)
            others = [p for p in main.panes() if p.id != pane]
            assert not any(p.display for p in others), "a small terminal shows one pane at a time"
        await pilot.press("tab")
        assert main.active == 2
        await pilot.press("shift+tab", "shift+tab")
        assert main.active == 4
    app = SaiConsole(str(make_daemon(NO_WORKER).socket))
    async with app.run_test(size=(160, 50)) as pilot:
        await connected(pilot, app)
        assert all(pane.display for pane in app.main.panes()), "a large terminal shows all four panes"


async def test_monitoring_panes_load_the_daemons_answer(make_daemon: Any) -> None:
    daemon = make_daemon(NO_WORKER)
    app = SaiConsole(str(daemon.socket))
    async with app.run_test(size=(160, 50)) as pilot:
        await connected(pilot, app)
        main = app.main
        await until(pilot, lambda: main.memory.loaded and main.alerts.loaded, 10, "both panes loaded")
        memory = str(main.query_one("#memory-body").render())
        assert "host" in memory and "worker" in memory and "sample at" in memory
        assert re.search(r"\d+ open, \d+ cleared in 24 h, \d+ total$", main.alerts.border_title)


async def test_a_monitoring_call_that_fails_is_named_in_its_pane() -> None:
    """No daemon behind the console: each pane says which call failed and why, in its own words."""
    app = offline_app()
    async with app.run_test(size=(160, 50)) as pilot:
        main = app.main
        await main.memory.reload()
        await main.alerts.reload()
        await pilot.pause()
        assert not main.memory.loaded and not main.alerts.loaded
        assert "metrics.snapshot: this console is not attached to a daemon" in str(
            main.query_one("#memory-body").render())
        assert str(main.query_one("#alerts-note").render()) == "alerts.list: this console is not attached to a daemon"
        assert main.alerts.border_title.endswith("error")
        await pilot.press("3", "a")
        await until(pilot, lambda: any("have not loaded yet" in n for n in notifications(app)), 5)


def _alerting_config() -> dict[str, Any]:
    """A host-memory rule at 1%, so that a fresh daemon raises an alert (when it has alert rules)."""
    from daemon import config

    defaults = config.load(None, environ={}, system_file=None).values
    if "host_memory_warning_percent" not in defaults.get("alerts", {}):
        return NO_WORKER
    return {**NO_WORKER, "alerts": {"host_memory_warning_percent": 1.0, "host_memory_critical_percent": 99.9}}


async def test_acknowledge_an_alert(make_daemon: Any, client_of: Any) -> None:
    daemon = make_daemon(_alerting_config())
    client = await client_of(daemon)
    for _ in range(50):
        if any(not a.get("acked") for a in (await client.call("alerts.list"))["alerts"]):
            break
        await asyncio.sleep(0.1)
    else:
        pytest.skip("no open alert to acknowledge on a fresh daemon")
    app = SaiConsole(str(daemon.socket))
    async with app.run_test(size=SIZE) as pilot:
        await connected(pilot, app)
        await until(pilot, lambda: app.main.alerts.open_count() > 0, 10)
        before = app.main.alerts.open_count()
        await pilot.press("3", "g", "a")
        await until(pilot, lambda: app.main.alerts.open_count() == before - 1, 10, "the alert acknowledged")
        listed = (await client.call("alerts.list", state="acked"))["alerts"]
        assert listed and listed[0]["acked_by"]


async def test_verify_shows_ok_then_names_the_first_tampered_entry(make_daemon: Any) -> None:
    daemon = make_daemon(NO_WORKER)
    app = SaiConsole(str(daemon.socket))
    async with app.run_test(size=SIZE) as pilot:
        await connected(pilot, app)
        await pilot.press("v")
        await until(pilot, lambda: any("Audit log verified" in n for n in notifications(app)), 20, "the OK notice")
        assert app.main.audit.verify_result.startswith("verify: OK")
        with sqlite3.connect(daemon.state_dir / "audit.db") as db:  # someone with the file edits entry 1
            db.execute("UPDATE audit_entries SET entry = entry || ' ' WHERE seq = 1")
        await pilot.press("v")
        await until(pilot, lambda: any("FAILED at entry 1" in n for n in notifications(app)), 20,
                    "the failure naming entry 1")
        assert app.main.audit.verify_result.startswith("verify: FAILED at entry 1")


async def test_command_line_and_palette(make_daemon: Any, client_of: Any) -> None:
    daemon = make_daemon(NO_WORKER)
    client = await client_of(daemon)
    app = SaiConsole(str(daemon.socket))
    async with app.run_test(size=SIZE) as pilot:
        await connected(pilot, app)
        await pilot.press("colon", *"resume", "enter")
        await until(pilot, lambda: app.main.header.queue.get("paused") is False, 10, "resumed via :resume")
        assert (await client.call("daemon.status"))["queue"]["paused"] is False
        await pilot.press("colon", *"bogus", "enter")
        await until(pilot, lambda: any("unknown command 'bogus' (try :help)" in n for n in notifications(app)), 5)
        await pilot.press("colon", *"theme light", "enter")
        assert app.theme == "textual-light"
        await pilot.press("ctrl+p")
        await until(pilot, lambda: isinstance(app.screen, CommandPalette), 5, "the palette")
        await pilot.press(*"Pause/resume queue")
        await pilot.pause(0.5)
        await pilot.press("enter")
        await until(pilot, lambda: app.main.header.queue.get("paused") is True, 10, "paused from the palette")


async def test_look_back_steps_through_time_and_returns_to_live(make_daemon: Any) -> None:
    daemon = make_daemon(NO_WORKER)
    app = SaiConsole(str(daemon.socket))
    async with app.run_test(size=(160, 50)) as pilot:
        await connected(pilot, app)
        banner = app.main.banner
        await pilot.press("left_square_bracket")
        await until(pilot, lambda: "LOOKING BACK" in banner.lookback and banner.display, 5, "the look-back banner")
        first = app.lookback_at
        await pilot.press("left_square_bracket")
        assert app.lookback_at is not None and first is not None and app.lookback_at < first
        memory = app.main.memory
        note = await until(pilot, lambda: memory.history_note, 10, "the history note")
        assert note in str(memory.query_one("#memory-body").render()) and "metrics.history:" not in note
        await pilot.press("right_square_bracket", "right_square_bracket")
        await until(pilot, lambda: app.lookback_at is None and not banner.display, 5, "back to live")
        await pilot.press("colon", *"at -2h", "enter")
        await until(pilot, lambda: app.lookback_at is not None, 5)
        assert "2h00m ago" in banner.lookback
        await pilot.press("colon", *"live", "enter")
        await until(pilot, lambda: app.lookback_at is None, 5)


async def test_daemon_messages_left_in_the_queue_at_shutdown_are_dropped() -> None:
    """The link's messages still queued while the app shuts down find the panes gone: dropped, not
    an error that fails the app's exit (seen as NoMatches: MemoryPane in the live tests)."""
    app = offline_app()
    async with app.run_test(size=(80, 24)) as pilot:
        await pilot.pause()
    assert not app.is_running
    app.on_metrics_sample(MetricsSample({"ts": 1.0}))
    app.on_alert_changed(AlertChanged({"kind": "raised", "alert": {}}))
    app.on_link_down(LinkDown("gone", 1.0, 1))
    app.on_job_changed(JobChanged({"job_id": "j1", "state": "queued"}))


async def test_the_memory_pane_shows_every_worker(make_daemon: Any) -> None:
    daemon = make_daemon({"worker": {"devices": ["cpu", "cpu"]}, "model": {"threads": 2}})
    app = SaiConsole(str(daemon.socket))
    async with app.run_test(size=(160, 50)) as pilot:
        await connected(pilot, app)
        main = app.main

        def both_workers() -> bool:
            body = str(main.query_one("#memory-body").render())
            return bool(re.search(r"cpu0\s+cpu · RSS \d", body) and re.search(r"cpu1\s+cpu · RSS \d", body))

        await until(pilot, both_workers, 120, "a line per worker with its RSS")
