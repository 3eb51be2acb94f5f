"""A daemon background task that dies shows as a red banner in an attached console, within seconds."""

from __future__ import annotations

import signal
import sys
from pathlib import Path
from typing import Any

from console.app import SaiConsole
from tests.configs import NO_WORKER
from tests.console.console_helpers import connected, screen_text, until

DOUBLE = Path(__file__).resolve().parents[1] / "service" / "dying_tasks.py"


async def test_a_dead_monitor_shows_as_a_daemon_fault_banner(make_daemon: Any) -> None:
    daemon = make_daemon(NO_WORKER, start=False)
    daemon.start(program=(sys.executable, str(DOUBLE), "monitor"))
    app = SaiConsole(str(daemon.socket))
    async with app.run_test(size=(120, 30)) as pilot:
        await connected(pilot, app)
        assert "DAEMON FAULT" not in screen_text(app)
        assert daemon.proc is not None
        daemon.proc.send_signal(signal.SIGUSR1)
        try:
            await until(pilot, lambda: "DAEMON FAULT: monitor died: InjectedFault" in screen_text(app), 15,
                        "the fault banner")
        except AssertionError as exc:
            raise AssertionError(f"{exc}\n{screen_text(app)}\n{daemon.read_log()[-3000:]}") from None
