"""Alerts: severity, rule and message, how often, last seen, acknowledged; `a` acknowledges.

From alerts.list and the `alert` topic; until the first answer, or when it fails, a note. Alerts
cleared in the last RECENT_CLEARED seconds stay, dimmed and counted: a worker-crash alert clears
itself once the worker is back, seconds later, and an operator who looks later must still see it.

A fleet member's console attached to other boxes (console.fleetlinks) holds their alerts too, each
marked with its box (`box`, keyed `box/id`: ids are per box) and shown in a box column.
"""

from __future__ import annotations

import asyncio
from typing import Any, ClassVar

from rich.text import Text
from textual.widgets import Static

from console.formatting import clock_time, parse_time
from console.widgets.pane import Pane, console_of
from console.widgets.table import Table

RECENT_CLEARED = 24 * 3600.0
CLEARED_LIMIT = 200
SEVERITY_RANK = {"critical": 0, "error": 0, "warning": 1, "info": 2}
SEVERITY_LABEL = {"critical": "CRIT", "error": "CRIT", "warning": "WARN", "info": "INFO"}


def alert_id(alert: dict[str, Any]) -> str:
    value = alert.get("alert_id", alert.get("id"))
    return "" if value is None else str(value)


def alert_key(alert: dict[str, Any]) -> str:
    """The pane's key of an alert: its id, prefixed with its box when another box raised it."""
    number = alert_id(alert)
    return f"{alert['box']}/{number}" if alert.get("box") and number else number


def is_acked(alert: dict[str, Any]) -> bool:
    return bool(alert.get("acked") or alert.get("acked_at") or alert.get("state") == "acked")


def is_cleared(alert: dict[str, Any]) -> bool:
    return alert.get("state") == "cleared"


class AlertsTable(Table):
    COMPONENT_CLASSES: ClassVar[set[str]] = {"alerts-table--critical", "alerts-table--warning",
                                             "alerts-table--info", "alerts-table--acked", "alerts-table--cleared"}

    alerts: list[dict[str, Any]] = []
    this_box: str | None = None

    def on_resize(self) -> None:
        self.show(self.alerts, self.this_box)

    def show(self, alerts: list[dict[str, Any]], this_box: str | None = None) -> None:
        """`this_box` set (attached to other boxes too): a box column, this box's alerts named by it."""
        self.alerts, self.this_box = alerts, this_box
        keep = self.selected_key()
        self.reset_columns([("severity", "sev", 6), *([("box", "box", 12)] if this_box else []),
                            ("message", "alert", None), ("count", "n", 4), ("last", "last", 8)])
        for alert in alerts:
            severity = str(alert.get("severity", "info")).lower()
            acked, cleared = is_acked(alert), is_cleared(alert)
            name = f"alerts-table--{severity if severity in ('critical', 'warning') else 'info'}"
            look = "alerts-table--cleared" if cleared else "alerts-table--acked" if acked else name
            style = self.get_component_rich_style(look, partial=True)
            label = SEVERITY_LABEL.get(severity, severity[:4].upper())
            message = str(alert.get("message") or alert.get("rule") or "")
            if cleared:
                message += f" (cleared {clock_time(parse_time(alert.get('cleared_at')))})"
            elif acked:
                message += f" (acked by {alert.get('acked_by') or '?'})"
            mark = "○ " if cleared else "✓ " if acked else "● "
            box = [Text(str(alert.get("box") or this_box), no_wrap=True, overflow="ellipsis")] if this_box else []
            self.add_row(Text(mark + label, style=style), *box,
                         Text(message, no_wrap=True, overflow="ellipsis", style=style if acked or cleared else ""),
                         Text(str(alert.get("count", 1)), style=style if cleared else ""),
                         Text(clock_time(parse_time(alert.get("last_seen") or alert.get("time"))),
                              style=style if cleared else ""),
                         key=alert_key(alert))
        self.select_key(keep)


class AlertsPane(Pane):
    number = 3
    title = "Alerts"

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(id="alerts", **kwargs)
        self.alerts: dict[str, dict[str, Any]] = {}
        self.loaded = False
        """Whether the pane holds the daemon's alerts (until then, and while it cannot, a note)."""
        self.this_box: str | None = None
        """This box's name once the console is attached to other boxes too (their alerts are shown)."""

    def compose(self) -> Any:
        yield Static("waiting for the daemon…", id="alerts-note", classes="note")
        yield AlertsTable(id="alerts-table")

    def on_mount(self) -> None:
        self.query_one(AlertsTable).display = False

    def focus_target(self) -> Any:
        return self.query_one(AlertsTable) if self.loaded else self

    def _note(self, text: str) -> None:
        note = self.query_one("#alerts-note", Static)
        note.update(text)
        note.display = bool(text)

    def show_boxes(self, this_box: str | None) -> None:
        """Attached to other boxes too (`this_box` set): every alert is shown with its box."""
        self.this_box = this_box
        if self.loaded:
            self._redraw()

    async def reload(self, until: float | None = None) -> None:
        """The open alerts and, when live, those cleared in the last RECENT_CLEARED seconds: this
        box's, and those of every other box the console is attached to."""
        app = console_of(self)
        await asyncio.gather(self.reload_box(None, app.rpc, until),
                             *(self.reload_box(box, call, until) for box, call in app.links.attached().items()))

    async def reload_box(self, box: str | None, call: Any, until: float | None = None) -> None:
        """One box's alerts through `call` (None: this box's, through the console's link)."""
        params: dict[str, Any] = {} if until is None else {"until": until}
        try:
            result = await call("alerts.list", **params)
            cleared = [] if until is not None else await call("alerts.list", state="cleared", limit=CLEARED_LIMIT)
        except Exception as exc:
            if box is None:  # another box's link trouble is the fleet pane's to show
                self._note(f"alerts.list: {exc}")
                self.query_one(AlertsTable).display = self.loaded
                self.set_info("error")
            return
        self.load(result, cleared, box)

    def load(self, listed: Any, cleared: Any = None, box: str | None = None) -> None:
        """Show alerts.list's answer (`cleared`: its answer for state=cleared, if asked), replacing
        what the pane held of that box (None: this box)."""
        self.loaded = True
        fresh = [{**a, "box": box} if box else a for a in _listed(cleared) + _listed(listed)]
        self.alerts = {**{key: a for key, a in self.alerts.items() if a.get("box") != box},
                       **{alert_key(a): a for a in fresh}}
        self._redraw()

    def apply(self, data: dict[str, Any], box: str | None = None) -> None:
        nested = data.get("alert")
        alert: dict[str, Any] = nested if isinstance(nested, dict) else data
        alert = {**alert, "box": box} if box else alert
        key = alert_key(alert)
        if not key:
            return
        update = {**alert, "state": "cleared"} if data.get("kind") == "cleared" else alert
        self.alerts[key] = {**self.alerts.get(key, {}), **update}
        self.loaded = True
        self._redraw()

    def _recent(self, alert: dict[str, Any]) -> bool:
        """Open, or cleared within RECENT_CLEARED seconds of now."""
        if not is_cleared(alert):
            return True
        stamp = parse_time(alert.get("cleared_at") or alert.get("last_seen"))
        return stamp is not None and stamp >= console_of(self).clock() - RECENT_CLEARED

    def _redraw(self) -> None:
        self.alerts = {key: a for key, a in self.alerts.items() if self._recent(a)}
        alerts = sorted(self.alerts.values(), key=lambda a: (is_cleared(a), is_acked(a), SEVERITY_RANK.get(
            str(a.get("severity", "info")).lower(), 3), -(parse_time(a.get("last_seen") or a.get("time")) or 0.0)))
        table = self.query_one(AlertsTable)
        table.display = True
        table.show(alerts, self.this_box)
        cleared = sum(1 for a in alerts if is_cleared(a))
        self._note("" if alerts else "No alerts (none open, none cleared in the last 24 h).")
        self.set_info(f"{self.open_count()} open, {cleared} cleared in 24 h, {len(alerts)} total")

    def selected(self) -> dict[str, Any] | None:
        key = self.query_one(AlertsTable).selected_key() if self.loaded else None
        return self.alerts.get(key) if key else None

    def open_count(self) -> int:
        return sum(1 for a in self.alerts.values() if not is_acked(a) and not is_cleared(a))


def _listed(result: Any) -> list[dict[str, Any]]:
    alerts = result.get("alerts", []) if isinstance(result, dict) else list(result or [])
    return [a for a in alerts if isinstance(a, dict)]
