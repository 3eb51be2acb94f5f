"""How the daemon answers what happens to its worker and jobs: alerts, events, job statistics.

The dispatcher reports plain facts (`crashed`, `leak`, `ready`, ...); this module decides which
become alerts an operator sees, and which clear them again.
"""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any

from daemon.background import TaskFailure
from daemon.queue.admission import TokenCounter
from daemon.queue.jobs import FAILED, SUCCEEDED, Job

if TYPE_CHECKING:
    from daemon.service import Daemon

log = logging.getLogger("sai.daemon")

# kind -> (alert key, severity); None clears the keys listed in CLEARS.
ALERTS = {
    "crashed": ("worker.crash", "warning"),
    "crash_loop": ("worker.crash_loop", "critical"),
    "leak": ("worker.leak", "warning"),
    "start_failed": ("worker.load", "critical"),
}
CLEARS = {
    "ready": ("worker.load", "worker.crash"),
    "restarted": ("worker.crash_loop", "worker.leak"),
}


class Reactions:
    def __init__(self, daemon: "Daemon") -> None:
        self.daemon = daemon
        self._tasks: set[asyncio.Task[Any]] = set()

    def _spawn(self, coro: Any) -> None:
        task = asyncio.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def worker_event(self, kind: str, data: dict[str, Any]) -> None:
        d = self.daemon
        if kind == "ready":
            tokenizer = Path(data.get("path", "")) / "tokenizer" / "tokenizer.json"
            d.queue.admission.tokens = TokenCounter(tokenizer, int(data.get("max_tokens", 77)))
            self._spawn(d.audit_action(None, "model.load", data.get("model_id", ""),
                                       {"weights_sha256": data.get("weights_sha256"), "device": data.get("device"),
                                        "dtype": data.get("dtype"), "worker_pid": data.get("pid")}))
        details = {k: v for k, v in data.items() if k not in ("memory", "path")}
        d.bus.publish("queue", {**details, "kind": f"worker.{kind}", **d.queue.status(),
                                "worker": {**d.worker.status(), "halted": d.dispatcher.halted}})
        if kind in ALERTS:
            key, severity = ALERTS[kind]
            message = f"{kind.replace('_', ' ')}: {data.get('error', '')}".strip(": ")
            self._spawn(d.monitor.alerts.raise_alert(key, severity, message, details))
        for key in CLEARS.get(kind, ()):
            self._spawn(d.monitor.alerts.clear(key, reason=kind))
        if kind == "restarted":
            self._spawn(d.audit_action(None, "worker.restarted", "", {"reason": data.get("reason", "")}))

    def storage_blocked(self, key: str, message: str | None) -> None:
        """A critical alert `key` while writes cannot go to disk (message: the job store or the
        audit log waits on a lock, the outputs filesystem is full); cleared when they succeed
        again (None)."""
        alerts = self.daemon.monitor.alerts
        if message is not None:
            self._spawn(alerts.raise_alert(key, "critical", message))
        else:
            self._spawn(alerts.clear(key, reason="writes succeed again"))

    def task_failed(self, failure: TaskFailure) -> None:
        """A critical alert naming the background task that died and what stopped with it."""
        monitor = getattr(self.daemon, "monitor", None)
        if monitor is None:  # died during start-up, which then fails with the log saying why
            return
        key = "task." + failure.name.replace(" ", "_")
        self._spawn(self._raise_even_unaudited(monitor.alerts.raise_alert(key, "critical", failure.message(),
                                                                          failure.view())))

    async def _raise_even_unaudited(self, raising: Any) -> None:
        try:
            await raising
        except Exception as exc:  # stored and published first; the audit log may be what died
            log.error("alert raised but not audited: %s", exc)

    def job_finished(self, job: Job) -> None:
        if job.state in (SUCCEEDED, FAILED):
            self.daemon.monitor.record_job_outcome(job.state == SUCCEEDED)

    async def drain(self) -> None:
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
