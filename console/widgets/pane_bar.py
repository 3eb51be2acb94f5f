"""In a small terminal one pane shows at a time: this line names them all and marks the one shown."""

from __future__ import annotations

from typing import ClassVar

from rich.text import Text
from textual.reactive import reactive
from textual.widget import Widget


class PaneBar(Widget):
    COMPONENT_CLASSES: ClassVar[set[str]] = {"pane-bar--active", "pane-bar--key"}

    active: reactive[int] = reactive(1)
    labels: reactive[tuple[str, ...]] = reactive(("Queue", "GPU & memory", "Alerts", "Audit"))

    def render(self) -> Text:
        text = Text(no_wrap=True, overflow="ellipsis")
        for number, label in enumerate(self.labels, start=1):
            style = self.get_component_rich_style("pane-bar--active", partial=True) if number == self.active else ""
            text.append(f" {number}", style=self.get_component_rich_style("pane-bar--key", partial=True))
            text.append(f" {label} ", style=style)
        text.append("  tab: next pane", style="dim")
        return text
