"""The main screen's key hints. Unlike Textual's Footer it does not rebuild itself on every focus
change (that re-lays out the whole screen), since the main screen's keys stay the same."""

from __future__ import annotations

from typing import ClassVar

from rich.text import Text
from textual.widget import Widget


class KeyBar(Widget):
    COMPONENT_CLASSES: ClassVar[set[str]] = {"key-bar--key"}

    def __init__(self, keys: list[tuple[str, str]], **kwargs: object) -> None:
        super().__init__(**kwargs)  # type: ignore[arg-type]
        self.keys = keys

    def set_keys(self, keys: list[tuple[str, str]]) -> None:
        """New hints (a screen whose keys depend on what it shows); redrawn only when they differ."""
        if keys != self.keys:
            self.keys = keys
            self.refresh()

    def render(self) -> Text:
        style = self.get_component_rich_style("key-bar--key", partial=True)
        text = Text(no_wrap=True, overflow="ellipsis", end="")
        for key, label in self.keys:
            text.append(f" {key} ", style=style)
            text.append(f"{label} ")
        return text
