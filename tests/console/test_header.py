"""The header's uptime only moves forward while the same daemon serves: a worker event or a reconnect
does not take it back (issue 20 point 8)."""

from __future__ import annotations

import re

from console.app import SaiConsole
from tests.console.console_helpers import STATUS

NOW = 1_800_000_000.0


def shown_uptime(app: SaiConsole) -> str:
    found = re.search(r"up (\S+)", str(app.main.header.render()))
    assert found, str(app.main.header.render())
    return found.group(1)


async def test_uptime_keeps_counting_through_worker_events_and_a_reconnect() -> None:
    now = [NOW]
    app = SaiConsole(None, clock=lambda: now[0])
    async with app.run_test(size=(140, 30)) as pilot:
        header = app.main.header
        header.link = "up"
        header.status = {**STATUS, "uptime": 100.0}
        await pilot.pause()
        assert shown_uptime(app) == "1m40s"
        now[0] += 50
        header.worker_state({"state": "crashed"})  # a queue event merged into the last status
        await pilot.pause()
        assert shown_uptime(app) == "2m30s"
        header.link = "down"
        now[0] += 30
        await pilot.pause()
        assert shown_uptime(app) == "2m30s"  # the daemon may be gone: the figure stands still
        header.link = "up"
        header.status = {**STATUS, "uptime": 180.0}  # the same daemon answers again
        now[0] += 1
        await pilot.pause()
        assert shown_uptime(app) == "3m01s"
