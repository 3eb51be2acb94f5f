"""The queue pane: the job table under a title that counts what it shows."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from console.rowfilter import RowFilter
from console.widgets.pane import Pane
from console.widgets.queue_table import QueueTable


class QueuePane(Pane):
    number = 1
    title = "Queue"

    def __init__(self, clock: Callable[[], float], **kwargs: Any) -> None:
        super().__init__(id="queue", **kwargs)
        self.clock = clock

    def compose(self) -> Any:
        yield QueueTable(self.clock, id="queue-table")

    @property
    def table(self) -> QueueTable:
        return self.query_one(QueueTable)

    def focus_target(self) -> QueueTable:
        return self.table

    @property
    def row_filter(self) -> RowFilter:
        return self.table.row_filter

    def set_filter(self, text: str) -> None:
        self.table.set_filter(text)

    def on_queue_table_view_changed(self) -> None:
        table = self.table
        counts = table.counts()
        total = len(table.jobs)
        parts = [f"{len(table.shown)}/{total} shown" if table.row_filter else f"{total} job{'' if total == 1 else 's'}"]
        parts.append(f"{counts['running']} running, {counts['queued']} queued")
        if table.row_filter:
            parts.append(f"filter {table.row_filter.text!r}")
        parts.append(f"sort {table.sort}{' ↑' if table.reverse else ''}")
        if table.tagged:
            parts.append(f"{len(table.tagged)} tagged")
        self.set_info(" · ".join(parts))
