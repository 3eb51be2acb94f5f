"""The main screen: header, banner, the four panes (five on a fleet member), the `/`/`:` line and the
footer; the operator's actions."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar

from textual import events, on, work
from textual.binding import Binding, BindingType
from textual.containers import Container
from textual.reactive import reactive
from textual.screen import Screen

from console.jobview import PRIORITIES, SORTS
from console.screens.confirm import ConfirmScreen, cancel_jobs
from console.widgets.alerts_pane import AlertsPane, alert_id
from console.widgets.audit_pane import AuditPane
from console.widgets.banner import Banner
from console.widgets.fleet_pane import FleetPane, merge_listed, unlisted
from console.widgets.header import StatusHeader
from console.widgets.key_bar import KeyBar
from console.widgets.memory_pane import MemoryPane
from console.widgets.pane import Pane, console_of
from console.widgets.pane_bar import PaneBar
from console.widgets.prompt_line import PromptLine
from console.widgets.queue_pane import QueuePane
from console.widgets.queue_table import QueueTable

COMPACT_WIDTH, COMPACT_HEIGHT = 120, 36
RESTART_WHEN = ("The batch it is running finishes first and no new one starts on it meanwhile; then "
                "the worker restarts (at once when idle). This also clears a crash-loop halt.")
"""What worker.restart does (daemon.dispatch): `sai worker restart --help` says the same."""


def read_only_refusal(name: str) -> str:
    return f":{name} changes the daemon's state, and this console is read-only (--readonly)"


SINGLE_BOX = ("this daemon is a single box ([fleet] database is not set): it has no fleet to show "
              "(docs/fleet.md)")


@dataclass(frozen=True)
class Command:
    """One thing the operator can do: its keys, its action, its name at `:` and in the palette."""

    keys: str
    action: str
    title: str
    help: str
    name: str = ""
    changes: bool = False
    """Changes daemon state: gone with --readonly."""
    show: bool = False
    label: str = ""
    """Short name in the footer (default: the title)."""


COMMANDS: list[Command] = [
    Command("q", "app.quit", "Quit", "Leave the console (asks first if an embedded daemon has work)", "quit",
            show=True),
    Command("question_mark,f1", "app.help", "Help", "Every key binding", "help", show=True),
    Command("slash", "filter", "Filter", "Filter the queue or audit pane: words, field:value, !negates",
            "filter", show=True),
    Command("colon", "command_line", "Command", "Type a command (pause, at -30m, theme light, …)", "command"),
    Command("1", "pane(1)", "Queue pane", "Jump to the queue", "queue"),
    Command("2", "pane(2)", "GPU & memory pane", "Jump to GPU and memory", "memory"),
    Command("3", "pane(3)", "Alerts pane", "Jump to alerts", "alerts"),
    Command("4", "pane(4)", "Audit pane", "Jump to the audit log", "audit"),
    Command("5", "fleet_pane", "Fleet pane", "Jump to the fleet's boxes (on a fleet member only)", "fleet"),
    Command("tab", "next_pane(1)", "Next pane", "Cycle through the panes", "next"),
    Command("shift+tab", "next_pane(-1)", "Previous pane", "Cycle back through the panes", "previous"),
    Command("enter", "open_detail", "Job detail", "Params, timeline, outputs, audit and preview of the job",
            "detail"),
    Command("n", "new_job", "New job", "Open the new-job form", "new", changes=True, show=True, label="New"),
    Command("x,ctrl+d", "cancel", "Cancel jobs", "Cancel the tagged jobs, or the selected one (asks first)",
            "cancel", changes=True, show=True, label="Cancel"),
    Command("plus", "priority(1)", "Raise priority", "Raise the priority of the selected or tagged queued jobs",
            "raise", changes=True),
    Command("minus", "priority(-1)", "Lower priority", "Lower the priority of the selected or tagged queued jobs",
            "lower", changes=True),
    Command("p", "toggle_pause", "Pause/resume queue", "Pause the queue, or resume it", "pause", changes=True,
            show=True, label="Pause"),
    Command("R", "restart_worker", "Restart worker", "Restart the worker process (admin; asks first)", "restart",
            changes=True),
    Command("a", "ack_alert", "Acknowledge alert", "Acknowledge the selected alert", "ack", changes=True),
    Command("v", "verify_audit", "Verify audit log", "Recompute the audit tree and check every signature",
            "verify", show=True, label="Verify"),
    Command("r,f5", "app.refresh_all", "Refresh", "Reload everything from the daemon (reconnect now if down)",
            "refresh"),
    Command("left_square_bracket", "look(-1)", "Step back in time",
            "Show memory, alerts and audit as they were one step earlier", "back"),
    Command("right_square_bracket", "look(1)", "Step forward in time", "One step later; past now returns to live",
            "forward"),
    Command("", "live", "Back to live", "Leave look-back and follow the daemon live", "live"),
    Command("i", "app.identify", "Identify image", "Identify an image file: C2PA credentials, fingerprint, job",
            "identify"),
    Command("T", "app.toggle_theme", "Dark/light theme", "Switch between the dark and the light theme", "theme"),
    Command("escape", "clear_filter", "Clear filter", "Clear the filter of the pane", "clear"),
]


TYPED_COMMANDS: list[tuple[str, str, bool]] = [
    ("at TIME", "Look back to TIME: -30m, 2h, 14:05, 14:05:30 or 2026-11-26T14:05", False),
    ("filter TEXT", "Filter the queue or audit pane, as / does", False),
    ("sort COLUMN", f"Sort the queue by {', '.join(SORTS)}", False),
    ("theme dark|light", "Dark or light theme", False),
    ("job ID", "Open the detail of job ID", False),
    ("identify PATH", "Identify the image at PATH (as sai identify does)", False),
    ("resume", "Resume the queue (:pause pauses it)", True),
]
"""`:` commands that take an argument or have no command of their own: (usage, what it does, changes
daemon state). With COMMANDS' names, what `:help` lists."""


class MainScreen(Screen[None]):
    BINDINGS: ClassVar[list[BindingType]] = [
        Binding(c.keys, c.action, c.label or c.title, show=c.show, priority=c.keys in ("tab", "shift+tab"))
        for c in COMMANDS if c.keys
    ]

    active: reactive[int] = reactive(1)

    def __init__(self, clock: Callable[[], float], embedded: bool, readonly: bool) -> None:
        super().__init__()
        self.clock = clock
        self.embedded = embedded
        self.readonly = readonly
        self._priority_lock = asyncio.Lock()

    def compose(self) -> Any:
        yield StatusHeader(self.clock, self.embedded, id="header")
        yield Banner(id="banner")
        yield PaneBar(id="pane-bar")
        with Container(id="panes"):
            yield QueuePane(self.clock)
            yield MemoryPane()
            yield AlertsPane()
            yield AuditPane()
            yield FleetPane()
        with Container(id="bottom"):
            yield PromptLine(id="prompt-line")
            yield KeyBar(self._hints(), id="key-bar")

    def _hints(self) -> list[tuple[str, str]]:
        shown = [c for c in COMMANDS if c.show and not (self.readonly and c.changes)]
        return [(self.app.get_key_display(Binding(c.keys.split(",")[0], "")), c.label or c.title) for c in shown] + [
            ("tab", "Pane"), ("^p", "Palette")]

    def check_action(self, action: str, parameters: tuple[object, ...]) -> bool | None:
        return self.app.check_action(action, parameters)

    def on_key(self, event: events.Key) -> None:
        """A key that changes the daemon's state, pressed in a read-only console: its binding is
        switched off (check_action), so say why nothing happens."""
        if not self.readonly:
            return
        command = next((c for c in COMMANDS if c.changes and c.keys and event.key in c.keys.split(",")), None)
        if command is not None:
            event.stop()
            self.notify(read_only_refusal(command.name), severity="warning")

    def on_mount(self) -> None:
        self.header.readonly = self.readonly
        self._layout()
        self.watch_active(self.active)

    # -- parts -------------------------------------------------------------------------------

    @property
    def header(self) -> StatusHeader:
        return self.query_one(StatusHeader)

    @property
    def banner(self) -> Banner:
        return self.query_one(Banner)

    @property
    def table(self) -> QueueTable:
        return self.query_one(QueueTable)

    @property
    def memory(self) -> MemoryPane:
        return self.query_one(MemoryPane)

    @property
    def alerts(self) -> AlertsPane:
        return self.query_one(AlertsPane)

    @property
    def audit(self) -> AuditPane:
        return self.query_one(AuditPane)

    @property
    def fleet(self) -> FleetPane:
        return self.query_one(FleetPane)

    @property
    def in_fleet(self) -> bool:
        """Attached to a fleet member: the fleet pane, its key and the queue's box column are shown."""
        return self.has_class("-fleet")

    def panes(self) -> list[Pane]:
        """The panes this console has, by number: the fleet's only on a fleet member."""
        return [pane for pane in self.query(Pane) if not isinstance(pane, FleetPane) or self.in_fleet]

    def refusal(self, name: str) -> str:
        """Why the `:` command `name` is switched off (check_action) in this console."""
        return SINGLE_BOX if name == "fleet" else read_only_refusal(name)

    # -- layout and panes ----------------------------------------------------------------------

    def on_resize(self) -> None:
        self._layout()

    def _layout(self) -> None:
        compact = self.size.width < COMPACT_WIDTH or self.size.height < COMPACT_HEIGHT
        self.set_class(compact, "-compact")

    def watch_active(self, active: int) -> None:
        for pane in self.panes():
            pane.set_class(pane.number == active, "-active")
        self.query_one(PaneBar).active = active
        if not self.query_one(PromptLine).is_open:
            self.panes()[active - 1].focus_target().focus()

    def action_pane(self, number: int) -> None:
        self.active = number
        self.panes()[number - 1].focus_target().focus()

    def action_next_pane(self, step: int) -> None:
        self.action_pane((self.active - 1 + step) % len(self.panes()) + 1)

    def action_fleet_pane(self) -> None:
        self.action_pane(5)

    def on_fleet_pane_joined(self) -> None:
        self.add_class("-fleet")
        bar = self.query_one(PaneBar)
        bar.labels = (*bar.labels, "Fleet")
        self.table.show_boxes()
        self.refresh_bindings()

    def on_fleet_pane_jobs(self, message: FleetPane.Jobs) -> None:
        merge_listed(self.table, message.jobs)
        if message.limit is not None and (gone := unlisted(self.table, message.jobs, message.limit)):
            self.fleet.read_jobs(gone)
        counts = self.table.counts()  # the fleet's, as the queue pane now holds them
        self.header.queue = {**self.header.queue, "queued": counts["queued"], "running": counts["running"]}

    def on_descendant_focus(self, event: events.DescendantFocus) -> None:
        for pane in self.panes():
            if event.widget is pane or pane in event.widget.ancestors:
                self.active = pane.number

    # -- filter and command line -----------------------------------------------------------------

    def filter_pane(self) -> QueuePane | AuditPane:
        """`/` filters the audit pane when it is the active one, else the queue."""
        return self.audit if self.active == 4 else self.query_one(QueuePane)

    def action_filter(self) -> None:
        self.query_one(PromptLine).open("filter", self.filter_pane().row_filter.text)

    def action_command_line(self) -> None:
        self.query_one(PromptLine).open("command")

    def action_clear_filter(self) -> None:
        self.filter_pane().set_filter("")

    @on(PromptLine.FilterChanged)
    def _filter_changed(self, event: PromptLine.FilterChanged) -> None:
        self.filter_pane().set_filter(event.text)

    @on(PromptLine.Closed)
    def _prompt_closed(self) -> None:
        self.panes()[self.active - 1].focus_target().focus()

    # -- jobs ----------------------------------------------------------------------------------

    async def on_queue_table_selected(self, message: QueueTable.Selected) -> None:
        await self.app.run_action(f"open_job({message.job_id!r})")

    async def action_open_detail(self) -> None:
        job_id = self.table.selected_key() if self.active == 1 else None
        if job_id is not None:
            await self.app.run_action(f"open_job({job_id!r})")

    async def action_new_job(self) -> None:
        await self.app.run_action("new_job")

    @work(group="cancel", exclusive=True)
    async def action_cancel(self) -> None:
        await cancel_jobs(self, self.targets())

    def targets(self) -> list[dict[str, Any]]:
        return self.table.targets()

    @work(group="priority")
    async def action_priority(self, step: int) -> None:
        app = console_of(self)
        async with self._priority_lock:  # key repeats apply one after another, each from the last answer
            jobs = [job for job in self.targets() if job.get("state") == "queued"]
            if not jobs:
                self.notify("Only queued jobs have a priority to change; select or tag one.", severity="warning")
                return
            at_limit = []
            for job in jobs:
                index = PRIORITIES.index(job["priority"]) if job.get("priority") in PRIORITIES else 1
                new = PRIORITIES[max(0, min(len(PRIORITIES) - 1, index + step))]
                if new == job.get("priority"):
                    at_limit.append(job["job_id"])
                    continue
                try:
                    reply = await app.rpc("job.set_priority", job_id=job["job_id"], priority=new)
                except Exception as exc:
                    self._report(f"Priority of {job['job_id']}", exc)
                else:
                    job["priority"] = reply.get("priority", new)
            if at_limit:
                limit = PRIORITIES[-1] if step > 0 else PRIORITIES[0]
                names = ", ".join(at_limit[:3]) + (f" and {len(at_limit) - 3} more" if len(at_limit) > 3 else "")
                self.notify(f"{names} already {'has' if len(at_limit) == 1 else 'have'} the "
                            f"{'highest' if step > 0 else 'lowest'} priority ({limit}).", severity="warning")

    def _report(self, what: str, exc: BaseException) -> None:
        console_of(self).report(what, exc)

    def action_toggle_pause(self) -> None:
        self.set_paused(not self.header.queue.get("paused"))

    @work(group="pause", exclusive=True)
    async def set_paused(self, pause: bool) -> None:
        try:
            result = await console_of(self).rpc("queue.pause" if pause else "queue.resume")
        except Exception as exc:
            self._report("Pause queue" if pause else "Resume queue", exc)
            return
        self.header.queue = {**self.header.queue, **result}
        self.notify("Queue paused: running jobs finish, no new ones start." if result.get("paused")
                    else "Queue resumed.")

    @work(group="restart", exclusive=True)
    async def action_restart_worker(self) -> None:
        worker = self.header.status.get("worker") or {}
        question = (f"Restart the worker process (pid {worker.get('pid') or '-'}, {worker.get('state') or '-'})?\n"
                    f"{RESTART_WHEN} This needs the admin role.")
        if not await self.app.push_screen_wait(ConfirmScreen("Restart worker", question)):
            return
        try:
            result = await console_of(self).rpc("worker.restart", reason="from the console")
        except Exception as exc:
            self._report("Restart worker", exc)
            return
        when = "once the running batch finishes" if result.get("after_batch") else "now"
        self.notify(f"The daemon restarts the worker {when}." if result.get("restarting") else str(result),
                    title="Restart worker")

    @work(group="ack")
    async def action_ack_alert(self) -> None:
        if not self.alerts.loaded:
            self.notify("The alerts have not loaded yet: nothing to acknowledge.", severity="warning")
            return
        alert = self.alerts.selected()
        if alert is None:
            self.notify("Select an alert in the Alerts pane (3) first.", severity="warning")
            return
        try:
            await console_of(self).links.call(alert.get("box"), "alerts.ack",  # to the box that raised it
                                              alert_id=alert.get("alert_id", alert_id(alert)))
        except Exception as exc:
            self._report("Acknowledge alert", exc)
            return
        self.alerts.apply({**alert, "acked": True})
        self.notify(f"Acknowledged: {alert.get('message') or alert_id(alert)}")

    @work(group="verify", exclusive=True)
    async def action_verify_audit(self) -> None:
        self.notify("Verifying the audit log…", timeout=2)
        try:
            result = await self.audit.verify()
        except Exception as exc:
            self._report("Verify audit log", exc)
            return
        if result.get("ok"):
            self.notify(f"Audit log verified: {result.get('size')} entries, all hashes and signatures good.",
                        title="Audit verify")
        else:
            self.notify(f"Audit log FAILED at entry {result.get('first_bad')}: {result.get('reason')}",
                        title="Audit verify", severity="error", timeout=30)

    # -- look back ---------------------------------------------------------------------------------

    async def action_look(self, step: int) -> None:
        await self.app.run_action(f"look({step})")

    async def action_live(self) -> None:
        await self.app.run_action("live")
