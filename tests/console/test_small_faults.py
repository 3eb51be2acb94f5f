"""Issue 20 point 8: the console's small faults, each driven through Pilot (against a real daemon
where the daemon has a say): the submit toast's position, stale row ages, ↑ on a Select, a field
error that outlived its value, cancel offered for a finished job, raw key names in the palette,
keys that did nothing and said nothing, a help screen that hid that it scrolls, and the `R`
dialog that disagreed with `sai worker restart`."""

from __future__ import annotations

import asyncio
import re
from typing import Any

from textual.command import CommandPalette

from console.app import SaiConsole
from console.screens.confirm import ConfirmScreen
from console.screens.help import HelpScreen
from console.screens.job_detail import JobDetailScreen
from console.screens.new_job import NewJobScreen
from tests.configs import NO_WORKER
from tests.console.console_helpers import (
    NOW,
    connected,
    fixed_job,
    notifications,
    offline_app,
    screen_line,
    screen_text,
    until,
)
from tests.harness import run_sai

SIZE = (120, 40)


def said(app: SaiConsole, text: str) -> bool:
    return any(text in n for n in notifications(app))


async def test_the_submit_toast_gives_the_daemons_position(make_daemon: Any) -> None:
    daemon = make_daemon(NO_WORKER)
    app = SaiConsole(str(daemon.socket))
    async with app.run_test(size=SIZE) as pilot:
        await connected(pilot, app)
        await pilot.press("n", *"first in line", "enter")
        await until(pilot, lambda: said(app, "Submitted"), 10, "the submit toast")
        [toast] = [n for n in notifications(app) if "Submitted" in n]
        assert toast.endswith(", position 1"), toast  # `sai submit` says "queued at position 1" too


async def test_row_ages_move_on_for_rows_scrolled_into_view_later() -> None:
    now = [NOW]
    app = SaiConsole(None, clock=lambda: now[0])
    async with app.run_test(size=SIZE) as pilot:
        app.main.table.load([fixed_job(n, "queued") for n in range(1, 80)])
        await pilot.press("G")  # the last rows drawn once, then scrolled out of view
        await pilot.pause(0.3)
        await pilot.press("g")
        await pilot.pause(0.3)
        now[0] += 3600
        await pilot.pause(6)  # the table's age refresh runs (every 5 s)
        await pilot.press("G")
        await pilot.pause(0.3)
        oldest = screen_line(app, "j000000000001")
        assert oldest.rstrip(" │").endswith("1h01m"), oldest  # not the 1m30s it showed when last drawn


async def test_up_and_down_walk_the_form_past_a_select_without_opening_it() -> None:
    app = SaiConsole(None, clock=lambda: NOW)
    async with app.run_test(size=SIZE) as pilot:
        await pilot.press("n")
        form = app.screen
        assert isinstance(form, NewJobScreen)
        await pilot.press("down", "down")
        size = form.query_one("#size")
        assert app.focused is size
        await pilot.press("up")
        assert app.focused is form.query_one("#negative_prompt") and not size.expanded  # type: ignore[attr-defined]
        await pilot.press("down", "down")
        assert app.focused is form.query_one("#steps") and not size.expanded  # type: ignore[attr-defined]
        await pilot.press("up", "enter")  # enter still opens the list
        assert size.expanded  # type: ignore[attr-defined]


async def test_a_fields_error_goes_once_its_value_is_edited(make_daemon: Any) -> None:
    daemon = make_daemon(NO_WORKER)
    app = SaiConsole(str(daemon.socket))
    async with app.run_test(size=SIZE) as pilot:
        await connected(pilot, app)
        await pilot.press("n", *"a red fox")
        form = app.screen
        form.query_one("#steps").value = "many"  # type: ignore[attr-defined]
        await pilot.press("ctrl+s")
        error = form.query_one("#error-steps")
        await until(pilot, lambda: error.display, 10, "the steps error")
        steps = form.query_one("#steps")
        steps.focus()
        await pilot.press("ctrl+u", "2", "0")
        await pilot.pause(0.1)
        assert not error.display and str(error.render()) == ""


async def test_job_detail_offers_cancel_only_for_a_job_that_can_be_cancelled(make_daemon: Any,
                                                                             client_of: Any) -> None:
    daemon = make_daemon(NO_WORKER)
    client = await client_of(daemon)
    done = (await client.call("job.submit", prompt="finished"))["job_id"]
    await client.call("job.cancel", job_id=done)
    waiting = (await client.call("job.submit", prompt="still queued"))["job_id"]
    app = SaiConsole(str(daemon.socket))
    async with app.run_test(size=SIZE) as pilot:
        await connected(pilot, app)
        await pilot.press("colon", *f"job {done}", "enter")
        detail = app.screen
        assert isinstance(detail, JobDetailScreen)
        keys = detail.query_one("#detail-keys")
        await until(pilot, lambda: detail.job.get("state") == "cancelled", 10, "the job loaded")
        await pilot.pause(0.1)
        assert "Cancel job" not in str(keys.render())
        await pilot.press("x")
        await until(pilot, lambda: said(app, f"{done} is cancelled: only a queued or running job can be cancelled"),
                    5, "why x does nothing")
        assert not isinstance(app.screen, ConfirmScreen)
        await pilot.press("escape", "colon", *f"job {waiting}", "enter")
        await until(pilot, lambda: detail.job.get("state") == "queued", 10, "the queued job loaded")
        await until(pilot, lambda: "Cancel job" in str(keys.render()), 5, "cancel offered")


async def test_the_palette_names_keys_as_the_footer_does() -> None:
    app = SaiConsole(None, clock=lambda: NOW)
    async with app.run_test(size=SIZE) as pilot:
        await pilot.press("ctrl+p")
        await until(pilot, lambda: isinstance(app.screen, CommandPalette), 5, "the palette")
        await pilot.press(*"Help")
        await until(pilot, lambda: "Every key binding" in screen_text(app), 5, "the help command listed")
        text = screen_text(app)
        assert "[? f1]" in text and "question_mark" not in text


async def test_keys_that_cannot_act_say_why(make_daemon: Any, client_of: Any) -> None:
    daemon = make_daemon(NO_WORKER)
    client = await client_of(daemon)
    job_id = (await client.call("job.submit", prompt="top priority", priority="critical"))["job_id"]
    app = SaiConsole(str(daemon.socket))
    async with app.run_test(size=SIZE) as pilot:
        await connected(pilot, app)
        await until(pilot, lambda: job_id in app.main.table.jobs, 10)
        await pilot.press("plus")
        await until(pilot, lambda: said(app, f"{job_id} already has the highest priority (critical)"), 5,
                    "why + did nothing")
    readonly = SaiConsole(str(daemon.socket), readonly=True)
    async with readonly.run_test(size=SIZE) as pilot:
        await connected(pilot, readonly)
        await pilot.press("x")
        await until(pilot, lambda: said(readonly, ":cancel changes the daemon's state, and this console is "
                                                  "read-only"), 5, "why x did nothing")
        await pilot.press("p")
        await until(pilot, lambda: said(readonly, ":pause changes the daemon's state"), 5, "why p did nothing")
    assert (await client.call("job.get", job_id=job_id))["state"] == "queued"


async def test_the_help_screen_says_it_scrolls() -> None:
    app = SaiConsole(None, clock=lambda: NOW)
    async with app.run_test(size=(80, 24)) as pilot:
        await pilot.press("f1")
        assert isinstance(app.screen, HelpScreen)
        box = app.screen.query_one("#help-box")
        await until(pilot, lambda: "more below" in str(box.border_subtitle), 5, "the scroll hint")
        assert "scroll" in str(app.screen.query_one("#help-title").render())
        await pilot.press("end")
        await until(pilot, lambda: "more above" in str(box.border_subtitle) and
                    "more below" not in str(box.border_subtitle), 5, "the hint at the end")


def _words(text: str) -> str:
    return re.sub(r"\s+", " ", text)


async def test_the_restart_dialog_and_sai_worker_restart_say_what_the_daemon_does(make_daemon: Any, client_of: Any,
                                                                                 wait_for: Any) -> None:
    promise = "The batch it is running finishes first and no new one starts on it meanwhile; then the worker restarts"
    cli_help = run_sai("worker", "restart", "--help")  # before the job: the batch must outlast the dialog
    assert promise in _words(cli_help.stdout), cli_help.stdout
    daemon = make_daemon()
    client = await client_of(daemon)
    await client.call("events.subscribe", topics=["job"])
    job_id = (await client.call("job.submit", prompt="finish first", width=256, height=256, steps=120))["job_id"]
    while True:
        data = (await client.next_event(timeout=120))["data"]
        if data.get("job_id") == job_id and data.get("kind") == "progress":
            break
    before = (await client.call("daemon.status"))["worker"]["pid"]
    app = SaiConsole(str(daemon.socket))
    async with app.run_test(size=SIZE) as pilot:
        await connected(pilot, app)
        await pilot.press("R")
        await until(pilot, lambda: isinstance(app.screen, ConfirmScreen), 5, "the restart dialog")
        question = _words(str(app.screen.query_one("#confirm-question").render()))
        assert promise in question and "back to the queue" not in question
        await pilot.press("y")
        await until(pilot, lambda: said(app, "restarts the worker once the running batch finishes"), 10)
    job = await wait_for(client, job_id)
    assert job["state"] == "succeeded" and job["attempts"] == 1  # it finished; it did not go back to the queue
    for _ in range(600):
        status = await client.call("daemon.status")
        if status["worker"]["pid"] not in (None, before) and status["worker"]["state"] == "ready":
            break
        await asyncio.sleep(0.1)
    assert status["worker"]["pid"] != before


async def test_a_finished_batch_reads_100_percent_not_10() -> None:
    """A job at 100% (its outputs being written) showed `10…` in the wide queue: the state column was
    one character short of its own text. Found watching 200 jobs on two fleet boxes."""
    for size in ((160, 50), (80, 24)):
        app = offline_app()
        async with app.run_test(size=size) as pilot:
            await pilot.pause()
            app.main.table.load([fixed_job(1, "running", progress=1.0), fixed_job(2, "running", progress=0.5)])
            await pilot.pause()
            assert "100%" in screen_line(app, "j000000000001"), (size, screen_text(app))
            assert "50%" in screen_line(app, "j000000000002")


async def test_an_audit_entry_both_loaded_and_sent_as_an_event_is_shown_once() -> None:
    """The console subscribes, then loads the audit tail: an entry appended in between comes both in
    the answer and as an event. The second copy stopped the console (DataTable DuplicateKey); seen
    as a missing daemon-fault banner in tests/console/test_daemon_fault.py."""
    app = offline_app()
    async with app.run_test(size=(160, 50)) as pilot:
        await pilot.pause()
        entries = [{"seq": i, "time": "2026-12-04T10:00:0%dZ" % i, "actor": {"user": "alice"}, "action": "job.submit",
                    "subject": f"j{i:012x}"} for i in range(4)]
        audit = app.main.audit
        audit.load({"entries": entries, "size": 4})
        audit.apply(entries[3])
        audit.apply({**entries[3], "seq": 4, "subject": "j00000000000f"})
        await pilot.pause()
        text = screen_text(app)
        assert text.count("j000000000003") == 1 and "j00000000000f" in text
        assert app.is_running
