"""Two header lines: where the daemon runs and how it is, from daemon.status, queue events and the audit head."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, ClassVar

from rich.text import Text
from textual.reactive import reactive
from textual.widget import Widget

from console.formatting import duration, short_hash


class StatusHeader(Widget):
    COMPONENT_CLASSES: ClassVar[set[str]] = {
        "status-header--title", "status-header--label", "status-header--alarm", "status-header--good",
        "status-header--mode",
    }

    status: reactive[dict[str, Any]] = reactive(dict, always_update=True)
    queue: reactive[dict[str, Any]] = reactive(dict, always_update=True)
    audit: reactive[dict[str, Any]] = reactive(dict, always_update=True)
    link: reactive[str] = reactive("connecting")
    readonly: reactive[bool] = reactive(False)
    stopping: reactive[bool] = reactive(False)

    def __init__(self, clock: Callable[[], float], embedded: bool, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.clock = clock
        self.embedded = embedded
        self._started: float | None = None
        """When the daemon started, on `clock`: from the `uptime` of the newest daemon.status reply."""
        self._uptime_seen: float | None = None
        self._frozen_at: float | None = None

    def on_mount(self) -> None:
        self.set_interval(1.0, self._tick)

    def _tick(self) -> None:
        if self.link == "up":
            self.refresh()

    def watch_status(self, status: dict[str, Any]) -> None:
        uptime = status.get("uptime")
        if uptime is not None and uptime != self._uptime_seen:  # a new reply, not a worker event merged in
            self._uptime_seen = float(uptime)
            self._started = self.clock() - float(uptime)
        if "queue" in status:
            self.queue = dict(status["queue"])

    def watch_link(self, link: str) -> None:
        """While the link is down the uptime stands still (the daemon may be gone), then resumes."""
        self._frozen_at = None if link == "up" else (self._frozen_at or self.clock())

    def uptime(self) -> float | None:
        if self._started is None:
            return None
        return max(0.0, (self._frozen_at or self.clock()) - self._started)

    def worker_state(self, worker: dict[str, Any]) -> None:
        self.status = {**self.status, "worker": {**self.status.get("worker", {}), **worker}}

    def _style(self, name: str) -> Any:
        return self.get_component_rich_style(f"status-header--{name}", partial=True)

    def _pair(self, text: Text, label: str, value: str | Text, style: str = "") -> None:
        if text.plain:
            text.append(" │ ", style=self._style("label"))
        text.append(f"{label} ", style=self._style("label"))
        text.append(value if isinstance(value, Text) else Text(value, style=self._style(style) if style else ""))

    def render(self) -> Text:
        status = self.status
        first, second = Text(no_wrap=True, overflow="ellipsis"), Text(no_wrap=True, overflow="ellipsis")
        first.append("Secure AI Studio" if self.size.width >= 100 else "SAI", style=self._style("title"))
        host = status.get("installation") or status.get("host") or "-"
        first.append(f" │ {host}", style="")
        if self.link != "up":
            first.append(" │ ", style=self._style("label"))
            first.append("DISCONNECTED" if self.link == "down" else "connecting…", style=self._style("alarm"))
        elif self.embedded:
            first.append(" │ ", style=self._style("label"))
            first.append(f"EMBEDDED daemon (pid {status.get('pid', '-')}, this process)", style=self._style("mode"))
        else:
            first.append(" │ ", style=self._style("label"))
            first.append(f"attached (pid {status.get('pid', '-')}"
                         + (", embedded in another sai)" if status.get("embedded") else ")"), style=self._style("mode"))
        uptime = self.uptime()
        if uptime is not None:
            self._pair(first, "up", duration(uptime))
        you = status.get("you") or {}
        if you:
            self._pair(first, "you", f"{you.get('user', '-')}/{you.get('role', '-')}")
        if self.readonly:
            first.append(" │ ", style=self._style("label"))
            first.append("READ-ONLY", style=self._style("alarm"))

        worker = status.get("worker") or {}
        model = (f"{worker['model_id']} on {worker.get('device') or '-'}" if worker.get("model_id")
                 else f"{(status.get('model') or {}).get('name', '?')} (not loaded yet)")
        self._pair(second, "model", model)
        state = str(worker.get("state") or "-")
        if worker.get("halted"):
            state = f"HALTED: {worker['halted']}"
        self._pair(second, "worker", state, "alarm" if state in ("crashed", "failed") or worker.get("halted") else "")
        queue = self.queue
        if queue:
            paused = bool(queue.get("paused"))
            word = "STOPPING" if self.stopping else "PAUSED" if paused else "running"
            label = Text(word, style=self._style("good" if word == "running" else "alarm"))
            label.append(f" {queue.get('queued', 0)}q {queue.get('running', 0)}r", style="")
            self._pair(second, "queue", label)
        audit = self.audit
        if audit.get("error"):
            self._pair(second, "audit", audit["error"], "label")
        elif "size" in audit:
            head = f"#{max(0, int(audit['size']) - 1)} {short_hash(audit.get('leaf_hash'), 8)}"
            self._pair(second, "audit", head)
        lines = Text("\n", no_wrap=True, overflow="ellipsis").join([first, second])
        lines.no_wrap, lines.overflow = True, "ellipsis"
        return lines
