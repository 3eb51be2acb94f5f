"""A daemon's shutdown is visible: an attached console shows the drain with a countdown, and quitting a
console that embeds its daemon shows the drain until the daemon has stopped (issue 20 point 5)."""

from __future__ import annotations

import asyncio
import re
import signal
import tempfile
from pathlib import Path
from typing import Any

from console.app import SaiConsole
from console.connection import start_embedded
from console.screens.confirm import ConfirmScreen
from console.screens.stopping import StoppingScreen
from daemon import config
from daemon.client import DaemonClient
from tests.console.console_helpers import connected, screen_text, until

SIZE = (120, 40)
LONG_JOB = {"prompt": "a long one", "steps": 150, "width": 256, "height": 256}


async def running(client: DaemonClient, job_id: str) -> None:
    while (await client.call("job.get", job_id=job_id))["state"] != "running":
        await asyncio.sleep(0.05)


def seconds_left(text: str) -> int:
    found = re.search(r"ha(?:s|ve) (\d+) s left", text)
    assert found, text
    return int(found.group(1))


async def test_an_attached_console_shows_the_daemon_draining_with_a_countdown(make_daemon: Any) -> None:
    daemon = make_daemon({"daemon": {"shutdown_grace": 120.0}})
    app = SaiConsole(str(daemon.socket))
    async with await DaemonClient.connect(daemon.socket) as client, app.run_test(size=SIZE) as pilot:
        await connected(pilot, app)
        job_id = (await client.call("job.submit", **LONG_JOB))["job_id"]
        await asyncio.wait_for(running(client, job_id), 120)
        assert daemon.proc is not None
        daemon.proc.send_signal(signal.SIGTERM)

        await until(pilot, lambda: "DAEMON STOPPING" in screen_text(app), 10, "the drain banner")
        first = seconds_left(screen_text(app))
        assert 100 <= first <= 120
        assert "STOPPING" in str(app.main.header.render())
        await until(pilot, lambda: seconds_left(screen_text(app)) < first, 5, "the countdown to move")
        await until(pilot, lambda: app.main.header.link == "down", 120, "the daemon to go")
        assert "DAEMON STOPPING" not in screen_text(app) and "Daemon unavailable" in screen_text(app)
    assert await asyncio.to_thread(daemon.proc.wait, 60) == 0


async def test_quitting_with_an_embedded_daemon_shows_the_drain_until_it_has_stopped(tmp_path: Path) -> None:
    cfg = config.load(None, environ={}, system_file=None).replace(daemon__shutdown_grace=90.0)
    socket_path = Path(tempfile.mkdtemp(prefix="sai-", dir="/tmp")) / "e.sock"
    embedded = await start_embedded(cfg, socket_path, tmp_path / "state", redirect_stderr=False)
    try:
        app = SaiConsole(str(socket_path), embedded=embedded)
        async with await DaemonClient.connect(socket_path) as client, app.run_test(size=SIZE) as pilot:
            await connected(pilot, app)
            job_id = (await client.call("job.submit", **LONG_JOB))["job_id"]
            await asyncio.wait_for(running(client, job_id), 120)
            await pilot.press("q")
            await until(pilot, lambda: isinstance(app.screen, ConfirmScreen), 5, "the question")
            await pilot.press("y")
            await until(pilot, lambda: isinstance(app.screen, StoppingScreen), 5, "the stopping screen")
            text = str(app.screen.query_one("#stopping-text").render())
            assert "1 running job(s) have" in text and 80 <= seconds_left(text) <= 90
            await until(pilot, lambda: not app.is_running, 120, "the console to quit once the daemon stopped")
        assert app.return_code == 0
        assert embedded.daemon.drain_deadline is not None
        assert not socket_path.exists()  # the daemon is down before the console has gone
    finally:
        await embedded.stop()
    state = tmp_path / "state"
    again = await start_embedded(cfg.replace(queue__start_paused=True, model__preload=False), socket_path, state,
                                 redirect_stderr=False)
    try:
        job = await again.daemon.queue.get(job_id)
        # The drain let it finish, or (on a loaded machine) past the grace put it back, never begun again.
        assert job.state == "succeeded" or (job.state == "queued" and job.started_at is None), job
    finally:
        await again.stop()
