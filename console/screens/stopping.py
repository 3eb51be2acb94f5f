"""Shown while the console stops the daemon it embeds: the drain's countdown (systemctl's
`deactivating`), so quitting with a running batch never looks like a hang."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from textual.containers import Vertical
from textual.screen import ModalScreen
from textual.widgets import Label, Static

QueueCounts = Callable[[], dict[str, Any]]
"""The embedded daemon's queue counts (`QueueManager.status`): read live, the daemon is in this process."""


class StoppingScreen(ModalScreen[None]):
    def __init__(self, grace: float, counts: QueueCounts, clock: Callable[[], float] = time.monotonic) -> None:
        super().__init__()
        self.counts, self.clock = counts, clock
        self.deadline = clock() + grace

    def compose(self) -> Any:
        with Vertical(id="stopping-box"):
            yield Label("Stopping the embedded daemon", id="stopping-title")
            yield Static(id="stopping-text", markup=False)

    def on_mount(self) -> None:
        self._tick()
        self.set_interval(0.5, self._tick)

    def _tick(self) -> None:
        left = max(0.0, self.deadline - self.clock())
        counts = self.counts()
        running, queued = int(counts.get("running", 0)), int(counts.get("queued", 0))
        if running:
            lines = [f"Draining: {running} running job(s) have {left:.0f} s left to finish;",
                     "past that they go back to the queue and run at the next start."]
        else:
            lines = ["No batch is running: closing the job store, the monitor and the audit log."]
        if queued:
            lines.append(f"{queued} queued job(s) stay queued for the next start.")
        lines.append("The console quits when the daemon has stopped (ctrl+c quits now; the stop goes on).")
        self.query_one("#stopping-text", Static).update("\n".join(lines))
