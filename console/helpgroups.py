"""The help screen's groups (console.screens.help draws them), built from the bindings and commands
themselves, never by hand: only the actions this console allows (`allowed(action)`) are listed."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from textual.app import App
from textual.binding import Binding

from console.screens.help import Group, binding_rows, key_label
from console.screens.job_detail import JobDetailScreen
from console.screens.main import COMMANDS, TYPED_COMMANDS
from console.screens.new_job import NewJobScreen
from console.widgets.queue_table import QueueTable
from console.widgets.table import Table


def help_groups(app: App[Any], allowed: Callable[[str], bool], readonly: bool) -> list[Group]:
    return [
        ("Main screen", [(key_label(app, c.keys), c.help) for c in COMMANDS if c.keys and allowed(c.action)]),
        ("Queue", binding_rows(app, QueueTable.BINDINGS) + [("click header", "Sort by that column")]),
        ("Alerts and audit tables", binding_rows(app, Table.BINDINGS) + [("↑ ↓ pgup pgdn", "Move")]),
        ("Job detail", binding_rows(app, [b for b in JobDetailScreen.BINDINGS
                                          if isinstance(b, Binding) and allowed(b.action)])),
        ("New-job form", binding_rows(app, NewJobScreen.BINDINGS) + [("tab shift+tab", "Next/previous field")]),
        ("Everywhere", [("ctrl+p", "Command palette: every action by name"), ("ctrl+c", "Quit"), ("f1", "Help")]),
        ("Command line (type : then a command, enter)", command_line_rows(allowed, readonly)),
    ]


def command_line_rows(allowed: Callable[[str], bool], readonly: bool) -> list[tuple[str, str]]:
    named = [(f":{c.name}", c.help) for c in COMMANDS if c.name and allowed(c.action)]
    typed = [(f":{usage}", text) for usage, text, changes in TYPED_COMMANDS if not (changes and readonly)]
    return sorted(named + typed)
