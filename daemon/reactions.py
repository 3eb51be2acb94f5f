"""How the daemon answers what happens to its worker, its storage and its background tasks:
alerts, events, audit entries.

The dispatcher reports plain facts about the worker (`crashed`, `leak`, `ready`, ...) through
`worker_event`, a hook it is given when built; this module decides which become alerts an
operator sees, and which clear them again. The parts built before the alert book (the audit
log, the job store, the background tasks, the output path) report through alarm events on the
bus instead (daemon.alarms), which Reactions listens to from its construction on.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Coroutine
from typing import Any

from daemon.alarms import ALARM
from daemon.events import EventBus
from daemon.monitor.alerts import AlertBook
from daemon.queue.manager import Auditor, QueueManager

log = logging.getLogger("sai.daemon")

# kind -> (alert key, severity); None clears the keys listed in CLEARS.
ALERTS = {
    "crashed": ("worker.crash", "warning"),
    "crash_loop": ("worker.crash_loop", "critical"),
    "leak": ("worker.leak", "warning"),
    "start_failed": ("worker.load", "critical"),
    "model_load_failed": ("worker.load", "critical"),
    "model_fit": ("model.fit", "warning"),
}
CLEARS = {
    "ready": ("worker.load", "worker.crash"),
    "restarted": ("worker.crash_loop", "worker.leak"),
}


class Reactions:
    def __init__(self, *, alerts: AlertBook, bus: EventBus, audit: Auditor, queue: QueueManager,
                 several_workers: bool = False) -> None:
        """`alerts`: the monitor's alert book; `bus`: where the `worker.*` events go and the alarms
        come from; `audit`: records worker restarts (model loads: daemon.catalog); `queue`: its counts go with
        each `worker.*` event."""
        self.alerts = alerts
        self.bus = bus
        self.audit = audit
        self.queue = queue
        self.several_workers = several_workers
        """With more than one worker, each worker's alerts have keys of their own (`worker.crash_loop.cuda1`)."""
        self._tasks: set[asyncio.Task[Any]] = set()
        bus.listen({ALARM}, self._alarm)

    def _spawn(self, coro: Coroutine[Any, Any, Any]) -> None:
        task = asyncio.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def worker_event(self, kind: str, data: dict[str, Any], worker: dict[str, Any]) -> None:
        """The dispatcher's hook (daemon.dispatch.WorkerEvents)."""
        details = {k: v for k, v in data.items() if k not in ("memory", "path")}
        self.bus.publish("queue", {**details, "kind": f"worker.{kind}", **self.queue.status(), "worker": worker})
        name = str(worker.get("name") or "")
        suffix = f".{name}" if self.several_workers and name else ""
        if kind in ALERTS:
            key, severity = ALERTS[kind]
            what = f"worker {name} {kind.replace('_', ' ')}" if suffix else kind.replace("_", " ")
            message = f"{what}: {data.get('error', '')}".strip(": ")
            self._spawn(self.alerts.raise_alert(key + suffix, severity, message, {**details, "worker": name}))
        for key in CLEARS.get(kind, ()):
            self._spawn(self.alerts.clear(key + suffix, reason=kind))
        if kind == "restarted":
            self._spawn(self.audit(None, "worker.restarted", name, {"reason": data.get("reason", "")}))

    def _alarm(self, topic: str, data: dict[str, Any]) -> None:
        """An alarm event (daemon.alarms): a critical alert raised, or cleared (message None) when
        writes succeed again."""
        key, message = str(data["key"]), data.get("message")
        if message is None:
            self._spawn(self.alerts.clear(key, reason="writes succeed again"))
            return
        raising = self.alerts.raise_alert(key, "critical", str(message), dict(data.get("details") or {}))
        self._spawn(raising if data.get("audited", True) else self._raise_even_unaudited(raising))

    async def _raise_even_unaudited(self, raising: Coroutine[Any, Any, Any]) -> None:
        try:
            await raising
        except Exception as exc:  # stored and published first; the audit log may be what died
            log.error("alert raised but not audited: %s", exc)

    async def drain(self) -> None:
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
