"""Identify an image from a path (output.identify, as `sai identify` does): the console reads the
file with its user's rights in a worker thread and sends the bytes; the daemon's report shows below."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any, ClassVar

from rich.text import Text
from textual import on, work
from textual.binding import Binding, BindingType
from textual.containers import Horizontal, Vertical
from textual.reactive import reactive
from textual.screen import ModalScreen
from textual.widgets import Input, Label, Static

from console.commands.identify import identify_bytes, read_image_file, summary_lines
from console.widgets.pane import console_of
from daemon.client import DaemonUnavailable
from daemon.protocol import RpcError


class IdentifyScreen(ModalScreen[None]):
    BINDINGS: ClassVar[list[BindingType]] = [Binding("escape", "close", "Close")]

    result: reactive[str] = reactive("")
    """What the last identify found (or why it failed), as `sai identify` prints it."""

    def __init__(self, path: str = "") -> None:
        super().__init__()
        self.initial = path

    def compose(self) -> Any:
        with Vertical(id="identify-box"):
            yield Label("Identify an image — a PNG, JPEG or WebP path, enter; esc closes", id="identify-title")
            with Horizontal(classes="form-row"):
                yield Label("File", classes="form-label")
                yield Input(value=self.initial, placeholder="/path/to/image.jpg", id="identify-path", compact=True)
            yield Static("", id="identify-result")

    def on_mount(self) -> None:
        self.query_one("#identify-path", Input).focus()
        if self.initial:
            self.identify(self.initial)

    @on(Input.Submitted, "#identify-path")
    def _submitted(self, event: Input.Submitted) -> None:
        if event.value.strip():
            self.identify(event.value.strip())

    def watch_result(self, text: str) -> None:
        if self.is_mounted:
            self.query_one("#identify-result", Static).update(Text(text))

    @work(exclusive=True, group="identify", exit_on_error=False)
    async def identify(self, path: str) -> None:
        self.result = f"identifying {path} …"
        target = Path(path).expanduser()
        try:
            data = await asyncio.to_thread(read_image_file, target)
        except (OSError, ValueError) as exc:
            why = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
            self.result = f"cannot read {path}: {why}"
            return
        try:
            report = await identify_bytes(console_of(self).rpc, data)
        except (RpcError, DaemonUnavailable) as exc:
            self.result = f"{path}: {exc}"
            return
        self.result = "\n".join(summary_lines(target.name, report))

    def action_close(self) -> None:
        self.dismiss(None)
