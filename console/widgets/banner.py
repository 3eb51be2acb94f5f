"""A one-line banner for what the operator must not miss: the daemon is gone, a part of it died, or the
panes show the past."""

from __future__ import annotations

from textual.reactive import reactive
from textual.widgets import Static


class Banner(Static):
    connection: reactive[str] = reactive("")
    fault: reactive[str] = reactive("")
    lookback: reactive[str] = reactive("")

    def _show(self) -> None:
        text = self.connection or self.fault or self.lookback
        self.set_class(bool(self.connection or self.fault), "-down")
        self.set_class(not (self.connection or self.fault) and bool(self.lookback), "-lookback")
        self.display = bool(text)
        self.update(text)

    def watch_connection(self) -> None:
        self._show()

    def watch_fault(self) -> None:
        self._show()

    def watch_lookback(self) -> None:
        self._show()
