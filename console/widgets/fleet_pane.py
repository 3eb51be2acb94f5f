"""The fleet pane, on a fleet member's console only: one row per box of the fleet, with the age of
its heartbeat (stale ones marked), its workers, running jobs, devices, memory and open alerts.

From fleet.status. The pane asks once per daemon it attaches to (a new pid in daemon.status); a
single box answers `configured: false` and the pane stays hidden, with no timer, so that console
looks as it always did. A member's pane refreshes every REFRESH seconds in a worker, and each
refresh also reads the head of the fleet's job list for the queue pane (`Jobs`): the daemon's
events cover the jobs of its own box only, not those other boxes claim and finish. The console
also attaches to the other boxes that the client config maps to sockets (console.fleetlinks, a
child of this pane); the `link` column says, per box, whether it is attached.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, ClassVar

from rich.text import Text
from textual import work
from textual.message import Message
from textual.widgets import Static

from console.fleetlinks import FleetLinks
from console.formatting import bytes_of, duration, level
from console.jobview import FINISHED
from console.widgets.header import StatusHeader
from console.widgets.pane import Pane, console_of
from console.widgets.queue_table import QueueTable
from console.widgets.table import Table
from daemon.client import DaemonUnavailable
from daemon.protocol import RpcError

REFRESH = 2.0
"""Seconds between two fleet.status (and job.list) calls of a member's console."""
STALE_BEATS = 3
"""A box whose heartbeat is older than this many of its fleet's heartbeat periods is marked stale."""
JOBS_PER_REFRESH = 100
CHECKED_PER_REFRESH = 50
"""Jobs the queue pane holds as unfinished but the listing left out, read one by one per refresh."""
"""The head of the fleet's job list read at each refresh: running and queued, then the newest finished."""
COMPARED = ("state", "priority", "box", "progress", "attempts", "error")


def heartbeat_cell(age: float, stale: bool) -> str:
    shown = f"{age:.1f} s" if age < 60 else duration(age)
    return f"‼ {shown} stale" if stale else f"{shown} ago"


def memory_cell(box: dict[str, Any]) -> list[tuple[str, str]]:
    """(text, level) pieces: host memory, then each GPU's."""
    pieces: list[tuple[str, str]] = []
    memory = box.get("memory")
    if memory:
        fraction = memory["used"] / memory["total"] if memory["total"] else 0.0
        pieces.append((f"host {fraction:.0%} {bytes_of(memory['used'], memory['total'])}", level(fraction)))
    for gpu in box.get("gpu_memory") or []:
        fraction = gpu["used"] / gpu["total"] if gpu["total"] else 0.0
        pieces.append((f"gpu{gpu.get('index', '?')} {fraction:.0%}", level(fraction)))
    return pieces


def alerts_cell(alerts: dict[str, int] | None) -> tuple[str, str]:
    """Open alerts by severity and the level to draw them in."""
    if alerts is None:
        return "?", "ok"
    parts = [f"{alerts[key]} {label}" for key, label in (("critical", "crit"), ("warning", "warn"), ("info", "info"))
             if alerts.get(key)]
    return (" · ".join(parts) or "none"), "critical" if alerts.get("critical") else \
        "warning" if alerts.get("warning") else "ok"


def merge_listed(table: QueueTable, jobs: list[dict[str, Any]]) -> None:
    """The fleet's job list into the queue table: new jobs and changes made on other boxes. A job the
    table already holds as finished (from this box's events) is not taken back by an older listing,
    and an unchanged one is not redrawn."""
    for job in jobs:
        known = table.jobs.get(job["job_id"])
        if known is not None and ((known.get("state") in FINISHED and job.get("state") not in FINISHED)
                                  or all(known.get(key) == job.get(key) for key in COMPARED)):
            continue
        table.apply(job)


def unlisted(table: QueueTable, jobs: list[dict[str, Any]], limit: int) -> list[str]:
    """Jobs the queue table holds as queued or running that the fleet's listing of `limit` jobs left
    out, oldest first (at most CHECKED_PER_REFRESH). While the listing held fewer unfinished jobs
    than its limit it held all of them, so these finished on another box since the table last saw
    them; when it was all unfinished jobs, a queued one may just be further down the queue, so only
    those shown running (a few per box) are asked about."""
    listed = {job["job_id"] for job in jobs}
    whole = sum(1 for job in jobs if job.get("state") not in FINISHED) < limit
    held = [job_id for job_id, job in table.jobs.items() if job_id not in listed and job.get("state") not in FINISHED
            and (whole or job.get("state") == "running")]
    return held[:CHECKED_PER_REFRESH]


class FleetTable(Table):
    COMPONENT_CLASSES: ClassVar[set[str]] = {"fleet-table--this", "fleet-table--ok", "fleet-table--warning",
                                             "fleet-table--critical"}

    boxes: list[dict[str, Any]] = []
    this_box: str | None = None
    stale_after = 15.0
    link_cell: Callable[[str], tuple[str, str]] | None = None

    def on_resize(self) -> None:
        self.show(self.boxes, self.this_box, self.stale_after, self.link_cell)

    def _style(self, name: str) -> Any:
        return self.get_component_rich_style(f"fleet-table--{name}", partial=True)

    def _styled(self, text: str, state: str) -> Text:
        return Text(text, no_wrap=True, overflow="ellipsis", style=self._style(state) if state != "ok" else "")

    def show(self, boxes: list[dict[str, Any]], this_box: str | None, stale_after: float,
             link_cell: Callable[[str], tuple[str, str]] | None = None) -> None:
        """`link_cell(box)`: whether the console is attached to that box (FleetLinks.cell)."""
        self.boxes, self.this_box, self.stale_after, self.link_cell = boxes, this_box, stale_after, link_cell
        keep = self.selected_key()
        self.reset_columns([("box", "box", 16), ("heartbeat", "heartbeat", 14), ("workers", "workers", 8),
                            ("running", "run", 3), ("devices", "devices", 20), ("memory", "memory", None),
                            ("alerts", "alerts", 16), *([("link", "link", 24)] if link_cell else [])])
        for box in boxes:
            age = float(box.get("heartbeat_age") or 0.0)
            stale = age > stale_after
            name = str(box["name"])
            memory = Text(no_wrap=True, overflow="ellipsis")
            for n, (piece, state) in enumerate(memory_cell(box)):
                memory.append((" · " if n else "") + piece, style=self._style(state) if state != "ok" else "")
            alerts, alert_level = alerts_cell(box.get("alerts"))
            devices = " ".join(f"{d.get('worker', '?')} ({d.get('device', '?')})" for d in box.get("devices") or [])
            self.add_row(Text(name + (" (this)" if name == this_box else ""),
                              style=self._style("this") if name == this_box else ""),
                         Text(heartbeat_cell(age, stale), style=self._style("critical") if stale else ""),
                         f"{box.get('free_workers', 0)}/{box.get('workers', 0)} free",
                         str(box.get("running", 0)),
                         Text(devices or "-", no_wrap=True, overflow="ellipsis"),
                         memory if memory.plain else Text("-"),
                         Text(alerts, style=self._style(alert_level) if alert_level != "ok" else ""),
                         *([self._styled(*link_cell(name))] if link_cell else []),
                         key=name)
        self.select_key(keep)


class FleetPane(Pane):
    number = 5
    title = "Fleet"

    class Joined(Message):
        """The daemon is a fleet member: show the pane, the box column, the fifth pane key."""

    class Jobs(Message):
        """The head of the fleet's job list, for the queue pane (`merge_listed`); `limit`: how many
        the listing asked for (None: jobs read one by one, `read_jobs`)."""

        def __init__(self, jobs: list[dict[str, Any]], limit: int | None = None) -> None:
            super().__init__()
            self.jobs = jobs
            self.limit = limit

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(id="fleet", **kwargs)
        self.joined = False
        self.status: dict[str, Any] = {}
        self._checked_pid: Any = None

    def compose(self) -> Any:
        yield Static("waiting for fleet.status…", id="fleet-note", classes="note")
        yield FleetTable(id="fleet-table")
        yield FleetLinks(id="fleet-links")

    @property
    def links(self) -> FleetLinks:
        return self.query_one(FleetLinks)

    def on_mount(self) -> None:
        self.watch(self.screen.query_one(StatusHeader), "status", self._daemon_status, init=False)

    def focus_target(self) -> Any:
        return self.query_one(FleetTable)

    def _daemon_status(self, status: dict[str, Any]) -> None:
        """Ask each daemon the console attaches to (its pid) once whether it is a fleet member."""
        pid = status.get("pid")
        if pid is not None and pid != self._checked_pid:
            self._checked_pid = pid
            self.refresh_fleet()

    def _note(self, text: str) -> None:
        note = self.query_one("#fleet-note", Static)
        note.update(text)
        note.display = bool(text)

    def _join(self) -> None:
        if not self.joined:
            self.joined = True
            self.post_message(self.Joined())
            self.set_interval(REFRESH, self._tick)

    def _tick(self) -> None:
        self.refresh_fleet()

    @work(group="fleet", exclusive=True, exit_on_error=False)
    async def refresh_fleet(self) -> None:
        app = console_of(self)
        try:
            status = await app.rpc("fleet.status")
        except RpcError as exc:
            if (exc.data or {}).get("reason") == "fleet_database":  # a member whose database is down
                self._join()
                self._note(f"fleet.status: {exc}")
                self.set_info("database unreachable, showing the last known boxes")
            elif self.joined:
                self._note(f"fleet.status: {exc}")
            else:
                self._checked_pid = None  # ask again at the next daemon.status
            return
        except DaemonUnavailable as exc:
            if self.joined:
                self.set_info(f"not connected ({exc}); showing the last known boxes")
            else:
                self._checked_pid = None
            return
        if not status.get("configured"):
            if self.joined:
                self._note("this daemon is no longer a fleet member ([fleet] database is not set)")
            return
        self._join()
        if status.get("box"):
            self.links.attach(str(status["box"]), app.fleet_sockets)
        self.load(status)
        try:
            listed = await app.rpc("job.list", limit=JOBS_PER_REFRESH)
        except (RpcError, DaemonUnavailable):
            return
        self.post_message(self.Jobs(listed.get("jobs", []), JOBS_PER_REFRESH))

    @work(group="fleet-jobs", exclusive=True, exit_on_error=False)
    async def read_jobs(self, job_ids: list[str]) -> None:
        """The jobs the listing left out that the queue pane holds as unfinished (`unlisted`)."""
        app = console_of(self)
        jobs = []
        for job_id in job_ids:
            try:
                jobs.append(await app.rpc("job.get", job_id=job_id))
            except (RpcError, DaemonUnavailable):
                continue
        if jobs:
            self.post_message(self.Jobs(jobs))

    def on_fleet_links_changed(self, message: FleetLinks.Changed) -> None:
        message.stop()
        if self.status:
            self.load(self.status)

    def load(self, status: dict[str, Any]) -> None:
        """Show fleet.status's answer."""
        self.status = status
        boxes = status.get("boxes") or []
        stale_after = STALE_BEATS * float(status.get("heartbeat_seconds") or 5.0)
        links = self.links
        self.query_one(FleetTable).show(boxes, status.get("box"), stale_after, links.cell)
        stale = sum(1 for box in boxes if float(box.get("heartbeat_age") or 0.0) > stale_after)
        unlisted = links.unlisted({str(box["name"]) for box in boxes})
        self._note(" ".join(filter(None, ["" if boxes else "No box is registered in the fleet.", unlisted and
                                          f"Mapped in [fleet] sockets but not in the fleet's registry: {unlisted}"])))
        self.set_info(f"{len(boxes)} box{'' if len(boxes) == 1 else 'es'}" + (f", {stale} stale" if stale else "")
                      + f" · fleet queue {status.get('queued', 0)} queued, {status.get('running', 0)} running"
                      + f" · stale: no heartbeat for {stale_after:g} s")
