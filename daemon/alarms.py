"""Alarms: what a part built before the alert book reports upward, as an event on the bus.

The audit log, the job store, the background tasks and the output path are built before the
monitor (whose alert book audits every alert through the audit log, so it needs the log first).
They cannot be handed the alert book, so they publish on the bus's internal `alarm` topic
instead, and `daemon.reactions.Reactions` (built once the monitor is open) turns each alarm into
a critical alert, or clears it. An alarm published before Reactions listens is heard by no one,
as at start-up nothing can show an alert yet (the start-up then fails with the log saying why).

`alarm` is not one of `daemon.protocol.TOPICS`: clients cannot subscribe to it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from daemon.events import EventBus

ALARM = "alarm"


@dataclass(frozen=True)
class Alarm:
    """A hook for one alert key: `alarm("why")` raises it, `alarm(None)` clears it. Given at
    construction to the job store and the audit log (writes waiting on a lock) and the dispatcher
    (the outputs filesystem full)."""

    bus: EventBus
    key: str

    def __call__(self, message: str | None) -> None:
        raise_alarm(self.bus, self.key, message)


def raise_alarm(bus: EventBus, key: str, message: str | None, details: dict[str, Any] | None = None,
                audited: bool = True) -> None:
    """Publish an alarm: a critical alert `key` with `message`, or its clearing (message None).
    `audited` False: the alert is raised even if the audit log cannot record it (a dead committer)."""
    bus.publish(ALARM, {"key": key, "message": message, "details": details or {}, "audited": audited})
