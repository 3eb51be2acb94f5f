"""Every key binding, grouped by where it works (built from the bindings themselves, never by hand)."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, ClassVar

from rich.table import Table
from rich.text import Text
from textual.app import App
from textual.binding import Binding, BindingType
from textual.containers import VerticalScroll
from textual.screen import ModalScreen
from textual.widgets import Label, Static

Group = tuple[str, list[tuple[str, str]]]


def key_label(app: App[Any], keys: str) -> str:
    return " ".join(app.get_key_display(Binding(key, "")) for key in keys.split(","))


def binding_rows(app: App[Any], bindings: Iterable[BindingType]) -> list[tuple[str, str]]:
    rows = []
    for item in bindings:
        binding = item if isinstance(item, Binding) else Binding(*item)
        if binding.description:
            rows.append((key_label(app, binding.key), binding.description))
    return rows


class HelpScreen(ModalScreen[None]):
    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("escape,q,question_mark,f1", "dismiss", "Close help"),
        Binding("j,down", "scroll(1)", "Down", show=False),
        Binding("k,up", "scroll(-1)", "Up", show=False),
    ]

    def __init__(self, groups: list[Group]) -> None:
        super().__init__()
        self.groups = groups

    def compose(self) -> Any:
        with VerticalScroll(id="help-box"):
            yield Label("Keys — esc closes; ↑ ↓ j k pgup pgdn scroll; ctrl+p lists every action by name",
                        id="help-title")
            for heading, rows in self.groups:
                table = Table.grid(padding=(0, 2))
                table.add_column(style="bold", min_width=14)
                table.add_column()
                for keys, text in rows:
                    table.add_row(Text(keys), Text(text))
                yield Label(heading, classes="help-heading")
                yield Static(table, classes="help-group")

    def on_mount(self) -> None:
        box = self.query_one("#help-box", VerticalScroll)
        self.watch(box, "scroll_y", self._where, init=False)
        self.call_after_refresh(self._where)

    def on_resize(self) -> None:
        self.call_after_refresh(self._where)

    def _where(self) -> None:
        """The border says when there is more above or below: the list is longer than most terminals."""
        box = self.query_one("#help-box", VerticalScroll)
        more = [word for word, there in (("↑ more above", box.scroll_y > 0),
                                         ("↓ more below (j, ↓, pgdn)", box.scroll_y < box.max_scroll_y)) if there]
        box.border_subtitle = " · ".join(more)

    def action_scroll(self, step: int) -> None:
        box = self.query_one("#help-box", VerticalScroll)
        box.scroll_to(y=box.scroll_y + step, animate=False)

    async def action_dismiss(self, result: Any = None) -> None:
        self.dismiss(None)
