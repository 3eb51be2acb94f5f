"""The console driven by Pilot against a real daemon: submit, run to the end, cancel, filter, pause,
priorities, refusals, read-only, reconnect."""

from __future__ import annotations

import getpass
from typing import Any

import pytest

from console.app import SaiConsole
from console.screens.confirm import ConfirmScreen
from console.screens.job_detail import JobDetailScreen
from console.screens.new_job import NewJobScreen
from tests.configs import NO_WORKER
from tests.console.console_helpers import connected, listed, notifications, screen_text, until

SIZE = (120, 40)


def console_for(daemon: Any, **kwargs: Any) -> SaiConsole:
    return SaiConsole(str(daemon.socket), **kwargs)


def dialog_text(app: SaiConsole) -> str:
    return str(app.screen.query_one("#confirm-question").render())


async def submit_via(client: Any, prompt: str, **params: Any) -> str:
    return str((await client.call("job.submit", prompt=prompt, **params))["job_id"])


async def test_submit_from_the_form_and_watch_it_run_to_the_end(make_daemon: Any) -> None:
    daemon = make_daemon()
    app = console_for(daemon)
    async with app.run_test(size=SIZE) as pilot:
        await connected(pilot, app)
        await pilot.press("n")
        assert isinstance(app.screen, NewJobScreen)
        await pilot.press(*"a lighthouse at dusk")
        await pilot.press("enter")
        await until(pilot, lambda: not isinstance(app.screen, NewJobScreen), 10, "the form to close")
        table = app.main.table
        job_id = await until(pilot, lambda: next(iter(table.jobs), None), 10, "the job in the table")
        await until(pilot, lambda: table.jobs[job_id]["state"] == "succeeded", 120, "the job to succeed")
        assert table.jobs[job_id]["params"]["prompt"] == "a lighthouse at dusk"
        await pilot.pause(0.3)
        text = screen_text(app)
        assert job_id in text and "succeeded" in text and "a lighthouse at dusk" in text
        await pilot.press("enter")
        assert isinstance(app.screen, JobDetailScreen)
        await until(pilot, lambda: "#0" in screen_text(app), 20, "the outputs in the detail")
        detail = screen_text(app)
        for expected in ("prompt", "a lighthouse at dusk", "seed", "Timeline", "queued", "running", "Outputs",
                         "Audit entries", "Preview"):
            assert expected in detail, expected
        entries = app.screen.audit_entries  # from the daemon's audit chain, this job's only
        assert {"job.submit", "job.start", "output.write", "job.finish"} <= {e["action"] for e in entries}
        assert {e["subject"] for e in entries} == {job_id}
        await pilot.press("escape")
        assert app.screen is app.main


async def test_the_forms_errors_come_from_the_daemon_and_show_under_the_field(make_daemon: Any,
                                                                            client_of: Any) -> None:
    daemon = make_daemon(NO_WORKER)
    client = await client_of(daemon)
    app = console_for(daemon)
    async with app.run_test(size=(80, 24)) as pilot:
        await connected(pilot, app)
        await pilot.press("n")
        form = app.screen
        assert isinstance(form, NewJobScreen)
        await pilot.press(*"a red fox")
        form.query_one("#steps").value = "many"  # type: ignore[attr-defined]
        await pilot.press("ctrl+s")
        error = form.query_one("#error-steps")
        await until(pilot, lambda: error.display, 10, "the steps error")
        expected = await _daemon_reason(client, prompt="a red fox", steps="many")
        assert expected["field"] == "steps"
        assert str(error.render()) == expected["reason"]
        form.query_one("#steps").value = "9999"  # type: ignore[attr-defined]
        await pilot.press("ctrl+s")
        expected = await _daemon_reason(client, prompt="a red fox", steps=9999)
        await until(pilot, lambda: str(error.render()) == expected["reason"], 10, "the range error")
        assert isinstance(app.screen, NewJobScreen)
        assert (await client.call("job.list"))["jobs"] == []


async def _daemon_reason(client: Any, **params: Any) -> dict[str, Any]:
    from daemon.protocol import INVALID_PARAMS, RpcError

    with pytest.raises(RpcError) as caught:
        await client.call("job.submit", **params)
    assert caught.value.code == INVALID_PARAMS
    assert isinstance(caught.value.data, dict)
    return caught.value.data


async def test_cancel_asks_first_defaults_to_no_and_names_jobs_and_owners(make_daemon: Any, client_of: Any) -> None:
    daemon = make_daemon(NO_WORKER)
    client = await client_of(daemon)
    first = await submit_via(client, "first job")
    second = await submit_via(client, "second job")
    app = console_for(daemon)
    async with app.run_test(size=SIZE) as pilot:
        await connected(pilot, app)
        await until(pilot, lambda: len(app.main.table.jobs) == 2, 10)
        app.main.table.select_key(first)
        await pilot.press("x")
        await until(pilot, lambda: isinstance(app.screen, ConfirmScreen), 5, "the confirmation")
        question = dialog_text(app)
        assert first in question and f"owner {getpass.getuser()}" in question and second not in question
        await pilot.press("enter")  # the default button is No
        await until(pilot, lambda: app.screen is app.main, 5)
        assert (await client.call("job.get", job_id=first))["state"] == "queued"

        await pilot.press("space")  # tags `first`, moves down to `second`
        await pilot.press("space")
        assert app.main.table.tagged == {first, second}
        await pilot.press("ctrl+d")
        await until(pilot, lambda: isinstance(app.screen, ConfirmScreen), 5, "the confirmation")
        question = dialog_text(app)
        assert "Cancel 2 jobs?" in question and first in question and second in question
        await pilot.press("y")
        table = app.main.table
        await until(pilot, lambda: {table.jobs[first]["state"], table.jobs[second]["state"]} == {"cancelled"}, 10,
                    "both jobs cancelled (seen through events)")
        for job_id in (first, second):
            assert (await client.call("job.get", job_id=job_id))["state"] == "cancelled"


async def test_filter_negate_and_clear(make_daemon: Any, client_of: Any) -> None:
    daemon = make_daemon(NO_WORKER)
    client = await client_of(daemon)
    fox = await submit_via(client, "a red fox")
    owl = await submit_via(client, "a snowy owl", priority="high")
    app = console_for(daemon)
    async with app.run_test(size=SIZE) as pilot:
        await connected(pilot, app)
        table = app.main.table
        title = lambda: str(app.main.query_one("#queue").border_title)  # noqa: E731
        await listed(pilot, app, 2)
        await until(pilot, lambda: "2 jobs · 0 running, 2 queued" in title(), 5, "the pane's title counting both")
        await pilot.press("slash", *"fox")
        assert table.shown == [fox]
        await until(pilot, lambda: "1/2 shown" in title() and "filter 'fox'" in title(), 5, "the title naming the filter")
        await pilot.press("enter")
        assert table.shown == [fox] and app.focused is table
        await pilot.press("slash")
        await pilot.press(*"\b\b\b!fox")  # the line opens with the current filter
        app.screen.query_one("#prompt-line").value = "!fox"  # type: ignore[attr-defined]
        await pilot.pause()
        assert table.shown == [owl]
        app.screen.query_one("#prompt-line").value = "pri:high state:queued"  # type: ignore[attr-defined]
        await pilot.pause()
        assert table.shown == [owl]
        await pilot.press("escape")
        assert sorted(table.shown) == sorted([fox, owl])
        assert "filter" not in title()
        await pilot.press("G")  # the header says where the cursor is (the table draws no scrollbar)
        assert table.selected_key() == table.shown[-1] and "row 2/2" in table.render_line(0).text
        await pilot.press("g")
        assert "row 1/2" in table.render_line(0).text


async def test_the_detail_screen_shows_the_job_it_is_opened_on_each_time(make_daemon: Any, client_of: Any) -> None:
    daemon = make_daemon(NO_WORKER)
    client = await client_of(daemon)
    await submit_via(client, "a red fox")
    await submit_via(client, "a snowy owl")
    app = console_for(daemon)
    async with app.run_test(size=SIZE) as pilot:
        await connected(pilot, app)
        table = app.main.table
        await listed(pilot, app, 2)
        seen = []
        for _ in range(2):
            job_id = table.selected_key()
            prompt = table.jobs[job_id]["params"]["prompt"]
            await pilot.press("enter")
            assert isinstance(app.screen, JobDetailScreen)
            await until(pilot, lambda: app.screen.audit_entries, 10, "the job's audit entries")
            text = screen_text(app)
            assert job_id in text and prompt in text
            assert {e["subject"] for e in app.screen.audit_entries} == {job_id}
            seen.append((job_id, prompt, text))
            await pilot.press("escape", "j")
            assert app.screen is app.main
        (first, first_prompt, _), (second, _, second_text) = seen
        assert first != second and first not in second_text and first_prompt not in second_text


async def test_pause_and_resume_the_queue(make_daemon: Any, client_of: Any) -> None:
    daemon = make_daemon({"model": {"preload": False}})
    client = await client_of(daemon)
    app = console_for(daemon)
    async with app.run_test(size=SIZE) as pilot:
        await connected(pilot, app)
        await pilot.press("p")
        await until(pilot, lambda: app.main.header.queue.get("paused") is True, 10, "paused in the header")
        assert (await client.call("daemon.status"))["queue"]["paused"] is True
        assert "PAUSED" in screen_text(app)
        await pilot.press("p")
        await until(pilot, lambda: app.main.header.queue.get("paused") is False, 10, "running in the header")
        assert (await client.call("daemon.status"))["queue"]["paused"] is False


async def test_plus_and_minus_change_priority(make_daemon: Any, client_of: Any) -> None:
    daemon = make_daemon(NO_WORKER)
    client = await client_of(daemon)
    job_id = await submit_via(client, "a lighthouse")
    app = console_for(daemon)
    async with app.run_test(size=SIZE) as pilot:
        await connected(pilot, app)
        table = app.main.table
        await until(pilot, lambda: job_id in table.jobs, 10)
        await until(pilot, lambda: "1 job · 0 running, 1 queued" in str(app.main.query_one("#queue").border_title), 5,
                    "the pane's title counting one job")
        await pilot.press("plus")
        await until(pilot, lambda: table.jobs[job_id]["priority"] == "high", 10, "priority high")
        await pilot.press("minus", "minus")
        await until(pilot, lambda: table.jobs[job_id]["priority"] == "low", 10, "priority low")
        assert (await client.call("job.get", job_id=job_id))["priority"] == "low"


async def test_a_refused_action_shows_the_daemons_message(make_daemon: Any, client_of: Any) -> None:
    daemon = make_daemon({**NO_WORKER, "auth": {"viewer_users": [getpass.getuser()]}})
    client = await client_of(daemon)
    app = console_for(daemon)
    async with app.run_test(size=SIZE) as pilot:
        await connected(pilot, app)
        await pilot.press("p")
        await until(pilot, lambda: any("queue.resume" in n or "queue.pause" in n for n in notifications(app)), 10)
        from daemon.protocol import RpcError

        with pytest.raises(RpcError) as refused:
            await client.call("job.submit", prompt="anything")
        await pilot.press("n", *"anything", "enter")
        error = app.screen.query_one("#error-form")
        await until(pilot, lambda: error.display, 10, "the refusal in the form")
        assert str(error.render()) == refused.value.message


async def test_readonly_removes_every_destructive_binding(make_daemon: Any, client_of: Any) -> None:
    daemon = make_daemon(NO_WORKER)
    client = await client_of(daemon)
    job_id = await submit_via(client, "keep me")
    app = console_for(daemon, readonly=True)
    async with app.run_test(size=SIZE) as pilot:
        await connected(pilot, app)
        await until(pilot, lambda: job_id in app.main.table.jobs, 10)
        for key in ("n", "x", "ctrl+d", "plus", "minus", "p", "R", "a"):
            await pilot.press(key)
            await pilot.pause(0.1)
            assert app.screen is app.main, key
        footer = screen_text(app).splitlines()[-1]
        assert "Cancel" not in footer and " New " not in footer and "READ-ONLY" in screen_text(app)
        await pilot.press("question_mark")
        help_text = screen_text(app)
        assert "Every key binding" in help_text or "Keys" in help_text
        assert "Cancel the tagged jobs" not in help_text and "Open the new-job form" not in help_text
        assert (await client.call("job.get", job_id=job_id))["state"] == "queued"
        assert (await client.call("daemon.status"))["queue"]["paused"] is True


async def test_the_console_survives_the_daemon_going_away_and_reconnects(make_daemon: Any) -> None:
    daemon = make_daemon(NO_WORKER)
    app = console_for(daemon)
    async with app.run_test(size=SIZE) as pilot:
        await connected(pilot, app)
        first_pid = app.main.header.status["pid"]
        daemon.terminate()
        banner = app.main.banner
        await until(pilot, lambda: banner.display and "Daemon unavailable" in banner.connection, 20, "the banner")
        assert app.main.header.link == "down"
        await pilot.press("r")  # a refresh while down only retries sooner
        daemon.start()
        await until(pilot, lambda: app.main.header.link == "up" and not banner.display, 30, "reconnection")
        await until(pilot, lambda: app.main.header.status.get("pid") != first_pid, 10, "the new daemon's status")
        assert app.is_running
