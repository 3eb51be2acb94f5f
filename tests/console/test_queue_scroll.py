"""The queue pane follows its cursor through more jobs than a screen holds (G, g, pgdn, pgup, j, k),
at 80×24 and at a larger size, against a real daemon holding hundreds of queued jobs."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from console.app import SaiConsole
from daemon.client import DaemonClient
from tests.configs import NO_WORKER
from tests.console.console_helpers import connected, screen_text, until
from tests.harness import submit_long_prompts

JOBS = 330
MANY_QUEUED = {**NO_WORKER, "queue": {**NO_WORKER["queue"], "burst": JOBS, "rate_per_minute": 60_000.0}}


async def submit_many(client: DaemonClient, count: int) -> None:
    for start in range(0, count, 50):
        await asyncio.gather(*(client.call("job.submit", prompt=f"scroll test job {n}")
                               for n in range(start, min(count, start + 50))))


def on_screen(app: SaiConsole) -> list[int]:
    """Rows of the queue (in its order) whose job id the screen shows."""
    text = screen_text(app)
    return [row for row, job_id in enumerate(app.main.table.shown) if job_id in text]


@pytest.mark.parametrize("size", [(80, 24), (120, 40)])
async def test_queue_view_follows_the_cursor_through_hundreds_of_jobs(size: tuple[int, int], make_daemon: Any,
                                                                     client_of: Any) -> None:
    daemon = make_daemon(MANY_QUEUED)
    await submit_many(await client_of(daemon), JOBS)
    app = SaiConsole(str(daemon.socket))
    async with app.run_test(size=size) as pilot:
        await connected(pilot, app)
        table = app.main.table
        await until(pilot, lambda: len(table.shown) == JOBS, 30, f"{JOBS} jobs listed")
        table.focus()
        await pilot.pause()
        first = on_screen(app)
        assert first[0] == 0 and len(first) < JOBS // 10, first

        async def press(key: str) -> list[int]:
            await pilot.press(key)
            await pilot.pause()
            rows = on_screen(app)
            assert table.cursor in rows, f"after {key}: cursor on row {table.cursor}, screen shows rows {rows}"
            return rows

        rows = await press("G")
        assert rows[-1] == JOBS - 1 and 0 not in rows
        assert f"row {JOBS}/{JOBS}" in screen_text(app)
        await press("pageup")
        rows = await press("pageup")
        assert rows[-1] < JOBS - 1
        rows = await press("g")
        assert rows[0] == 0
        for _ in range(3):
            rows = await press("pagedown")
        assert 0 not in rows and table.cursor > len(first)
        top = rows[0]
        for _ in range(len(first) + 2):
            rows = await press("j")
        assert rows[0] > top
        for _ in range(2 * len(first) + 4):
            rows = await press("k")
        assert rows[0] < top


async def test_the_cursor_keeps_its_row_when_the_job_under_it_finishes(make_daemon: Any, client_of: Any) -> None:
    """Watching the head of a busy queue: each job that ends would otherwise carry the cursor (and the
    view) down to the finished rows at the bottom."""
    daemon = make_daemon({"queue": {"max_batch": 1}})
    client = await client_of(daemon)
    await asyncio.gather(*(client.call("job.submit", prompt=f"head of the queue {n}", steps=2) for n in range(60)))
    app = SaiConsole(str(daemon.socket))
    async with app.run_test(size=(100, 24)) as pilot:
        await connected(pilot, app)
        table = app.main.table
        await until(pilot, lambda: len(table.shown) == 60, 30, "60 jobs listed")
        table.focus()
        await pilot.press("g")
        watched = table.selected_key()
        assert watched is not None and table.cursor == 0
        await until(pilot, lambda: table.jobs[watched]["state"] == "succeeded", 60, "the watched job to finish")
        await pilot.pause()
        assert table.cursor == 0 and table.selected_key() != watched
        assert 0 in on_screen(app)


async def test_a_history_longer_than_one_reply_line_loads_whole_and_the_console_stays_attached(
        make_daemon: Any, client_of: Any) -> None:
    """300 jobs with prompts as long as allowed list to more than one reply line holds: the console
    reads them a page at a time (it used to ask for all at once, lose the connection on the reply,
    reconnect and ask again, for ever)."""
    daemon = make_daemon(MANY_QUEUED)
    ids = await submit_long_prompts(await client_of(daemon), 300)
    app = SaiConsole(str(daemon.socket))
    async with app.run_test(size=(120, 40)) as pilot:
        await connected(pilot, app)
        await until(pilot, lambda: set(app.main.table.jobs) == ids, 30, "every job in the queue pane")
        await pilot.pause(1.0)
        assert app.main.header.link == "up" and not app.main.banner.connection
