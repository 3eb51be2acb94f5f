"""An embedded daemon: same process and loop; the header says so; quitting with work asks first."""

from __future__ import annotations

import stat
import tempfile
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from console.app import SaiConsole
from console.connection import Embedded, start_embedded
from console.screens.confirm import ConfirmScreen
from daemon import config
from daemon.client import DaemonClient
from tests.console.console_helpers import connected, screen_text, until


@pytest.fixture
async def embedded_daemon(tmp_path: Path) -> AsyncIterator[Embedded]:
    cfg = config.load(None, environ={}, system_file=None).replace(queue__start_paused=True, model__preload=False)
    socket_path = Path(tempfile.mkdtemp(prefix="sai-", dir="/tmp")) / "e.sock"
    embedded = await start_embedded(cfg, socket_path, tmp_path / "state", redirect_stderr=False)
    yield embedded
    await embedded.stop()


async def test_embedded_daemon_shows_in_the_header_and_quitting_asks_while_it_has_work(
        embedded_daemon: Embedded) -> None:
    socket_path = embedded_daemon.daemon.socket_path
    state = embedded_daemon.daemon.state_dir
    for name in ("embedded-daemon.log", "jobs.sqlite3", "audit.db", "metrics.sqlite3"):
        assert stat.S_IMODE((state / name).stat().st_mode) == 0o600, name  # the console's umask does not widen them
    app = SaiConsole(str(socket_path), embedded=embedded_daemon)
    async with await DaemonClient.connect(socket_path) as client, app.run_test(size=(120, 40)) as pilot:
        await connected(pilot, app)
        assert "EMBEDDED daemon" in screen_text(app)
        assert app.main.header.status["embedded"] is True
        job = await client.call("job.submit", prompt="wait for me")
        await until(pilot, lambda: job["job_id"] in app.main.table.jobs, 10)
        await pilot.press("q")
        await until(pilot, lambda: isinstance(app.screen, ConfirmScreen), 5, "the question")
        assert "1 queued" in str(app.screen.query_one("#confirm-question").render())
        await pilot.press("n")
        await until(pilot, lambda: app.screen is app.main, 5)
        assert app.is_running
        await client.call("job.cancel", job_id=job["job_id"])
        await pilot.press("q")
        await until(pilot, lambda: not app.is_running, 5, "the console to quit without asking")
    assert app.return_code == 0

