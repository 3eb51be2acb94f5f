"""A one-line banner for what the operator must not miss: the daemon is gone or stopping, a part of it
died, or the panes show the past."""

from __future__ import annotations

import time
from collections.abc import Callable

from textual.reactive import reactive
from textual.widgets import Static


class Banner(Static):
    connection: reactive[str] = reactive("")
    stopping_until: reactive[float | None] = reactive(None)
    """While the daemon drains for a shutdown: when its grace for the running batch ends (`clock`)."""
    fault: reactive[str] = reactive("")
    lookback: reactive[str] = reactive("")

    def __init__(self, clock: Callable[[], float] = time.monotonic, *, id: str | None = None,
                 classes: str | None = None) -> None:
        super().__init__(id=id, classes=classes)
        self.clock = clock

    def on_mount(self) -> None:
        self.set_interval(1.0, self._count_down)

    def _count_down(self) -> None:
        if self.stopping_until is not None and not self.connection:
            self._show()

    def _stopping(self) -> str:
        if self.stopping_until is None:
            return ""
        left = max(0.0, self.stopping_until - self.clock())
        return (f"DAEMON STOPPING: draining — the running batch has {left:.0f} s left to finish, then goes back to "
                "the queue; queued jobs wait for the next start.")

    def _show(self) -> None:
        stopping = "" if self.connection else self._stopping()
        text = self.connection or stopping or self.fault or self.lookback
        self.set_class(bool(self.connection or (self.fault and not stopping)), "-down")
        self.set_class(bool(stopping), "-stopping")
        self.set_class(not (self.connection or stopping or self.fault) and bool(self.lookback), "-lookback")
        self.display = bool(text)
        self.update(text)

    def watch_connection(self) -> None:
        self._show()

    def watch_stopping_until(self) -> None:
        self._show()

    def watch_fault(self) -> None:
        self._show()

    def watch_lookback(self) -> None:
        self._show()
