"""The bottom line for `/` (filter, live as you type) and `:` (a command)."""

from __future__ import annotations

from typing import Any, ClassVar

from textual import on
from textual.binding import Binding, BindingType
from textual.message import Message
from textual.widgets import Input

PLACEHOLDERS = {
    "filter": "filter: words match any column · field:value (state: user: pri: id: prompt: model:) · !negates · "
              "esc clears",
    "command": "command: pause, resume, cancel, new, verify, at -30m, live, sort age, theme light, help…",
}


class PromptLine(Input):
    BINDINGS: ClassVar[list[BindingType]] = [Binding("escape", "dismiss", "Close", show=False)]

    class FilterChanged(Message):
        def __init__(self, text: str, done: bool) -> None:
            super().__init__()
            self.text, self.done = text, done

    class Command(Message):
        def __init__(self, text: str) -> None:
            super().__init__()
            self.text = text

    class Closed(Message):
        pass

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(compact=True, **kwargs)
        self.mode = "filter"
        self.visible = False

    def open(self, mode: str, value: str = "") -> None:
        self.mode = mode
        self.placeholder = PLACEHOLDERS[mode]
        self.value = value
        self.visible = True
        self.focus()
        self.cursor_position = len(value)

    @property
    def is_open(self) -> bool:
        return self.visible

    def close(self) -> None:
        self.visible = False
        self.post_message(self.Closed())

    @on(Input.Changed)
    def _changed(self, event: Input.Changed) -> None:
        event.stop()
        if self.visible and self.mode == "filter":
            self.post_message(self.FilterChanged(event.value, done=False))

    @on(Input.Submitted)
    def _submitted(self, event: Input.Submitted) -> None:
        event.stop()
        if self.mode == "filter":
            self.post_message(self.FilterChanged(event.value, done=True))
        elif event.value.strip():
            self.post_message(self.Command(event.value.strip()))
        self.close()

    def action_dismiss(self) -> None:
        if self.mode == "filter":
            self.value = ""
            self.post_message(self.FilterChanged("", done=True))
        self.close()
