"""Alerts: severity, rule and message, how often, last seen, acknowledged; `a` acknowledges.

From alerts.list and the `alert` topic. A daemon without them gets a plain note instead.
"""

from __future__ import annotations

from typing import Any, ClassVar

from rich.text import Text
from textual.widgets import Static

from console.connection import not_offered
from console.widgets.display import clock_time, parse_time
from console.widgets.pane import Pane, console_of
from console.widgets.table import Table

SEVERITY_RANK = {"critical": 0, "error": 0, "warning": 1, "info": 2}
SEVERITY_LABEL = {"critical": "CRIT", "error": "CRIT", "warning": "WARN", "info": "INFO"}


def alert_id(alert: dict[str, Any]) -> str:
    value = alert.get("alert_id", alert.get("id"))
    return "" if value is None else str(value)


def is_acked(alert: dict[str, Any]) -> bool:
    return bool(alert.get("acked") or alert.get("acked_at") or alert.get("state") == "acked")


class AlertsTable(Table):
    COMPONENT_CLASSES: ClassVar[set[str]] = {"alerts-table--critical", "alerts-table--warning",
                                             "alerts-table--info", "alerts-table--acked"}

    alerts: list[dict[str, Any]] = []

    def on_resize(self) -> None:
        self.show(self.alerts)

    def show(self, alerts: list[dict[str, Any]]) -> None:
        self.alerts = alerts
        keep = self.selected_key()
        self.reset_columns([("severity", "sev", 6), ("message", "alert", None), ("count", "n", 4),
                            ("last", "last", 8)])
        for alert in alerts:
            severity = str(alert.get("severity", "info")).lower()
            acked = is_acked(alert)
            name = f"alerts-table--{severity if severity in ('critical', 'warning') else 'info'}"
            style = self.get_component_rich_style("alerts-table--acked" if acked else name, partial=True)
            label = SEVERITY_LABEL.get(severity, severity[:4].upper())
            message = str(alert.get("message") or alert.get("rule") or "")
            if acked:
                message += f" (acked by {alert.get('acked_by') or '?'})"
            self.add_row(Text(("✓ " if acked else "● ") + label, style=style),
                         Text(message, no_wrap=True, overflow="ellipsis", style=style if acked else ""),
                         str(alert.get("count", 1)), clock_time(parse_time(alert.get("last_seen") or alert.get("time"))),
                         key=alert_id(alert))
        self.select_key(keep)


class AlertsPane(Pane):
    number = 3
    title = "Alerts"

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(id="alerts", **kwargs)
        self.alerts: dict[str, dict[str, Any]] = {}
        self.offered: bool | None = None

    def compose(self) -> Any:
        yield Static("waiting for the daemon…", id="alerts-note", classes="note")
        yield AlertsTable(id="alerts-table")

    def on_mount(self) -> None:
        self.query_one(AlertsTable).display = False

    def focus_target(self) -> Any:
        return self.query_one(AlertsTable) if self.offered else self

    def _note(self, text: str) -> None:
        note = self.query_one("#alerts-note", Static)
        note.update(text)
        note.display = bool(text)

    async def reload(self, until: float | None = None) -> None:
        params: dict[str, Any] = {} if until is None else {"until": until}
        try:
            result = await console_of(self).rpc("alerts.list", **params)
        except Exception as exc:
            self.offered = False if not_offered(exc) else self.offered
            self._note("The daemon does not raise alerts yet (alerts.list: no such method). "
                       "This pane fills in when it does." if not_offered(exc) else f"alerts.list: {exc}")
            self.query_one(AlertsTable).display = bool(self.offered)
            self.set_info("not offered" if not_offered(exc) else "error")
            return
        alerts = result.get("alerts", []) if isinstance(result, dict) else list(result or [])
        self.offered = True
        self.alerts = {alert_id(a): a for a in alerts if isinstance(a, dict)}
        self._note("" if self.alerts else "No alerts.")
        self._redraw()

    def apply(self, data: dict[str, Any]) -> None:
        alert = data.get("alert") if isinstance(data.get("alert"), dict) else data
        key = alert_id(alert)
        if not key:
            return
        if data.get("kind") == "cleared" or alert.get("state") == "cleared":
            self.alerts.pop(key, None)
        else:
            self.alerts[key] = {**self.alerts.get(key, {}), **alert}
        self.offered = True
        self._note("")
        self._redraw()

    def _redraw(self) -> None:
        alerts = sorted(self.alerts.values(), key=lambda a: (is_acked(a), SEVERITY_RANK.get(
            str(a.get("severity", "info")).lower(), 3), -(parse_time(a.get("last_seen") or a.get("time")) or 0.0)))
        table = self.query_one(AlertsTable)
        table.display = True
        table.show(alerts)
        open_count = sum(1 for a in alerts if not is_acked(a))
        self.set_info(f"{open_count} open, {len(alerts)} total")

    def selected(self) -> dict[str, Any] | None:
        key = self.query_one(AlertsTable).selected_key() if self.offered else None
        return self.alerts.get(key) if key else None

    def open_count(self) -> int:
        return sum(1 for a in self.alerts.values() if not is_acked(a))
