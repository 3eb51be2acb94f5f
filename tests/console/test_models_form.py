"""The new-job form offers the daemon's configured models (model.list), the default one chosen,
and submits the one picked."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from textual.widgets import Input, Select

from console.app import SaiConsole
from console.screens.new_job import NewJobScreen
from tests.configs import NO_WORKER
from tests.console.console_helpers import connected, screen_line, until


async def open_form(pilot: Any, app: SaiConsole) -> NewJobScreen:
    """The new-job form, once it offers the daemon's models with the default (tiny) chosen."""
    await connected(pilot, app)
    await pilot.press("n")
    form = app.screen
    assert isinstance(form, NewJobScreen)
    select = form.query_one("#model", Select)
    await until(pilot, lambda: select.value == "tiny", 10, "the model list")
    return form


async def test_the_form_offers_the_models_with_the_default_chosen(make_daemon: Any, client_of: Any,
                                                                  other_model: Path) -> None:
    daemon = make_daemon({**NO_WORKER, "models": {"other": {"path": str(other_model)}}})
    client = await client_of(daemon)
    app = SaiConsole(str(daemon.socket))
    async with app.run_test(size=(120, 40)) as pilot:
        form = await open_form(pilot, app)
        select = form.query_one("#model", Select)
        offered = [value for _, value in select._options if value != Select.BLANK]
        assert offered == ["tiny", "other"]
        assert "tiny (sd15, default)" in [str(label) for label, _ in select._options]
        select.value = "other"
        await pilot.press(*"a red fox", "enter")
        await until(pilot, lambda: not isinstance(app.screen, NewJobScreen), 10, "the form to close")
    jobs = (await client.call("job.list"))["jobs"]
    assert [(job["model"], job["params"]["prompt"]) for job in jobs] == [("other", "a red fox")]


async def test_the_queue_shows_each_jobs_model_once_it_holds_two_and_filters_by_it(
        make_daemon: Any, client_of: Any, other_model: Path) -> None:
    daemon = make_daemon({**NO_WORKER, "models": {"other": {"path": str(other_model)}}})
    client = await client_of(daemon)
    first = (await client.call("job.submit", prompt="on the default"))["job_id"]
    app = SaiConsole(str(daemon.socket))
    async with app.run_test(size=(140, 40)) as pilot:
        await connected(pilot, app)
        await until(pilot, lambda: screen_line(app, first) != "", 10, "the first job's row")
        assert screen_line(app, "job", "pri", "state") and not screen_line(app, "job", "state", "model")
        second = (await client.call("job.submit", prompt="on the other", model="other"))["job_id"]
        await until(pilot, lambda: screen_line(app, second, "other") != "", 10, "the second job's row with its model")
        assert screen_line(app, "job", "state", "model", "prompt")
        assert "tiny" in screen_line(app, first, "on the default")
        await pilot.press("slash", *"model:other", "enter")
        await until(pilot, lambda: screen_line(app, first) == "", 10, "the filter to hide the default model's job")
        assert screen_line(app, second, "other")


async def test_the_negative_prompt_is_off_for_a_model_that_takes_none(make_daemon: Any) -> None:
    """Flux has no negative prompt (the daemon refuses one): the form says so instead of letting a
    person type one and be refused."""
    daemon = make_daemon({**NO_WORKER, "models": {"tiny-flux": {}}})
    app = SaiConsole(str(daemon.socket))
    async with app.run_test(size=(120, 40)) as pilot:
        form = await open_form(pilot, app)
        select, negative = form.query_one("#model", Select), form.query_one("#negative_prompt", Input)
        negative.value = "blurry"
        select.value = "tiny-flux"
        await until(pilot, lambda: negative.disabled, 10, "the negative prompt to be switched off")
        assert negative.value == "" and negative.placeholder == "flux models take no negative prompt"
        select.value = "tiny"
        await until(pilot, lambda: not negative.disabled, 10, "the negative prompt back on")
        assert negative.placeholder == "what to avoid (optional)"
