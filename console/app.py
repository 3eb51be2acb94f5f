"""`sai`: the operations console, attached to a daemon's socket (console.launch starts it, with a
daemon embedded in this process when none answers); everything live comes from events.subscribe
(console.connection)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterable, Mapping
from functools import partial, wraps
from pathlib import Path
from typing import Any, ClassVar, TypeVar

from textual import work
from textual.app import App, SystemCommand
from textual.binding import Binding, BindingType
from textual.markup import escape
from textual.screen import Screen

from console.connection import (
    AlertChanged,
    AuditAppended,
    DaemonLink,
    Embedded,
    JobChanged,
    JobProgress,
    LinkDown,
    LinkUp,
    MetricsSample,
    QueueChanged,
)
from console.fleetlinks import FleetLinks
from console.fleetroute import where_held
from console.formatting import clock_time, duration, parse_moment
from console.helpgroups import help_groups
from console.jobview import SORTS
from console.listing import fetch_jobs
from console.screens.confirm import ConfirmScreen
from console.screens.help import HelpScreen, key_label
from console.screens.identify import IdentifyScreen
from console.screens.job_detail import JobDetailScreen
from console.screens.main import COMMANDS, Command, MainScreen
from console.screens.new_job import NewJobScreen
from console.screens.stopping import StoppingScreen
from console.widgets.audit_pane import AuditPane
from console.widgets.prompt_line import PromptLine
from console.widgets.queue_table import QueueTable
from daemon.client import DaemonUnavailable
from daemon.protocol import RpcError

LOOK_STEP = 300.0
LOOK_WINDOW = 900.0
STATUS_REFRESH = 2.0
LISTED_JOBS = 1000
"""The jobs the queue pane loads (running, queued, then the latest finished): the rest stay a `sai jobs --all` away."""


def action_name(action: str) -> str:
    """`app.look(-1)` -> `look`: the name check_action sees."""
    return action.removeprefix("app.").split("(")[0]


CHANGES = {action_name(c.action) for c in COMMANDS if c.changes} | {"set_paused"}



M = TypeVar("M")


def while_running(handler: Callable[[Any, M], None]) -> Callable[[Any, M], None]:
    """For the handlers of the daemon link's and the panes' messages: one still queued when the app
    shuts down (its main screen's widgets already removed) is dropped instead of looking for a pane
    that is gone."""
    @wraps(handler)
    def guarded(app: Any, message: M) -> None:
        if app.is_running and app.main.is_attached:
            handler(app, message)
    return guarded


class SaiConsole(App[int]):
    CSS_PATH = Path(__file__).with_name("app.tcss")
    TITLE = "Secure AI Studio"
    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("ctrl+c", "quit", "Quit", show=False, priority=True),
        Binding("f1", "help", "Help", show=False),
    ]
    main: MainScreen

    def __init__(self, socket_path: str | None, *, readonly: bool = False, embedded: Embedded | None = None,
                 clock: Callable[[], float] = time.time, fleet_sockets: Mapping[str, str] | None = None,
                 **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.socket_path = socket_path
        self.fleet_sockets = dict(fleet_sockets or {})
        """The client config's `[fleet] sockets`: where a job's outputs held by another box are followed."""
        self.readonly = readonly
        self.embedded = embedded
        self.clock = clock
        self.link = DaemonLink(self, socket_path) if socket_path else None
        self.lookback_at: float | None = None
        self._wanted_prompts: set[str] = set()
        self._status_due = False
        self.theme = "textual-dark"

    def get_default_screen(self) -> Screen[Any]:
        self.main = MainScreen(self.clock, self.embedded is not None, self.readonly)
        return self.main

    def on_mount(self) -> None:
        if self.link is not None:
            self.link.start()

    def check_action(self, action: str, parameters: tuple[object, ...]) -> bool | None:
        return not (self.readonly and action in CHANGES) and (action != "fleet_pane" or self.main.in_fleet)

    # -- talking to the daemon ---------------------------------------------------------------------

    async def rpc(self, method: str, /, **params: Any) -> Any:
        if self.link is None:
            raise DaemonUnavailable("this console is not attached to a daemon")
        return await self.link.call(method, **params)

    @property
    def links(self) -> FleetLinks:
        return self.main.fleet.links

    async def rpc_where_held(self, method: str, /, **params: Any) -> Any:
        """A call for a job's outputs: straight to the fleet box that ran it when attached to that box
        (console.fleetlinks), else here, then again on the box that holds them (console.fleetroute)."""
        links = self.links
        here = links.call_of(self.main.table.jobs.get(str(params.get("job_id")), {}).get("box")) or self.rpc
        return await where_held(lambda call: call(method, **params), here, lambda: self.fleet_sockets, links.call_of)

    def report(self, what: str, exc: BaseException) -> None:
        """Show the daemon's own message for a refused or failed action (role, rate limit, policy…)."""
        message = str(exc) if isinstance(exc, (RpcError, DaemonUnavailable)) else f"{type(exc).__name__}: {exc}"
        self.notify(message, title=what, severity="error", timeout=10)

    @while_running
    def on_link_up(self, _: LinkUp) -> None:
        self.main.banner.connection = ""
        self._show_stopping(None)  # a daemon that takes a new connection is serving
        self.main.header.link = "up"
        self.lookback_at = None
        self.main.banner.lookback = ""
        self.reload_all()

    @while_running
    def on_link_down(self, message: LinkDown) -> None:
        main = self.main
        main.header.link = "down"
        main.banner.connection = (f"Daemon unavailable: {message.reason} — retrying in {message.retry_in:.0f} s "
                                  f"(attempt {message.attempt}); r retries now. Showing the last known state.")

    @work(group="reload", exclusive=True, exit_on_error=False)
    async def reload_all(self) -> None:
        main = self.main
        try:
            status = await self.rpc("daemon.status")
            jobs, _ = await fetch_jobs(self.rpc, limit=LISTED_JOBS)
        except Exception as exc:
            self.report("Loading from the daemon", exc)
            return
        self._show_status(status)
        main.table.load(jobs)
        self._header_counts()
        await asyncio.gather(main.memory.reload(), main.alerts.reload(), main.audit.reload(), return_exceptions=True)

    def on_queue_table_prompts_wanted(self, message: QueueTable.PromptsWanted) -> None:
        """Events carry no prompt: fetch it once per new job, by one worker draining a set."""
        idle = not self._wanted_prompts
        self._wanted_prompts.update(message.job_ids)
        if idle:
            self._fetch_prompts()

    @work(group="prompts", exit_on_error=False)
    async def _fetch_prompts(self) -> None:
        table = self.main.table
        while self._wanted_prompts:
            job_id = self._wanted_prompts.pop()
            try:
                table.set_prompt(await self.rpc("job.get", job_id=job_id))
            except (RpcError, DaemonUnavailable):
                continue

    def _header_counts(self) -> None:
        counts = self.main.table.counts()
        header = self.main.header
        header.queue = {**header.queue, "queued": counts["queued"], "running": counts["running"]}

    def _status_soon(self) -> None:
        if not self._status_due:
            self._status_due = True
            self.set_timer(STATUS_REFRESH, self._refresh_status)

    @work(group="status", exclusive=True, exit_on_error=False)
    async def _refresh_status(self) -> None:
        self._status_due = False
        try:
            status = await self.rpc("daemon.status")
        except (RpcError, DaemonUnavailable):
            return
        self._show_status(status)
        self._header_counts()

    def _show_status(self, status: dict[str, Any]) -> None:
        main = self.main
        main.header.status = status
        self._show_stopping(status.get("stopping"))
        main.memory.set_worker(status.get("worker") or {})
        failed = (status.get("tasks") or {}).get("failed") or []
        main.banner.fault = "DAEMON FAULT: " + " · ".join(task["message"] for task in failed) if failed else ""

    def _show_stopping(self, stopping: dict[str, Any] | None) -> None:
        """The daemon's drain (daemon.stopping, or daemon.status `stopping`): banner countdown, header."""
        main = self.main
        main.header.stopping = stopping is not None
        main.banner.stopping_until = (None if stopping is None
                                      else main.banner.clock() + float(stopping.get("drain_left", 0.0)))

    # -- events ------------------------------------------------------------------------------------

    def _detail(self, job_id: str) -> JobDetailScreen | None:
        screen = self.screen
        return screen if isinstance(screen, JobDetailScreen) and screen.job_id == job_id else None

    @while_running
    def on_job_changed(self, message: JobChanged) -> None:
        self.main.table.apply(message.job)
        self._header_counts()
        if message.job.get("state") in ("succeeded", "failed", "cancelled"):
            self._status_soon()
        if (detail := self._detail(str(message.job.get("job_id")))) is not None:
            detail.job_event(message.job)

    @while_running
    def on_job_progress(self, message: JobProgress) -> None:
        self.main.table.progress(message.job_id, message.progress)
        if (detail := self._detail(message.job_id)) is not None:
            detail.job_progress(message.progress, message.step, message.steps)

    @while_running
    def on_queue_changed(self, message: QueueChanged) -> None:
        data = message.data
        header = self.main.header
        header.queue = {**header.queue, **{k: data[k] for k in ("paused", "queued", "running") if k in data}}
        if isinstance(data.get("worker"), dict):
            header.worker_state(data["worker"])
            self.main.memory.set_worker(data["worker"])
        if data.get("kind") == "daemon.stopping":
            self._show_stopping(data)
            self.notify(f"The daemon is shutting down: the running batch has {float(data['drain_left']):.0f} s "
                        "to finish.", title="Daemon stopping", severity="warning", timeout=10)
        if str(data.get("kind", "")).startswith("worker."):
            self.notify(f"Worker {str(data['kind'])[7:]}" + (f": {data['error']}" if data.get("error") else ""),
                        severity="error" if data["kind"] in ("worker.crashed", "worker.start_failed")
                        else "information")

    @while_running
    def on_metrics_sample(self, message: MetricsSample) -> None:
        if self.lookback_at is None:
            self.main.memory.add_sample(message.data)

    @while_running
    def on_alert_changed(self, message: AlertChanged) -> None:
        if self.lookback_at is None:
            self.main.alerts.apply(message.data)
        alert = message.data.get("alert") or {}
        if str(alert.get("key", "")).startswith("task."):  # a daemon task died: the banner says so
            self._status_soon()

    @while_running
    def on_audit_appended(self, message: AuditAppended) -> None:
        self.main.audit.apply(message.entry)
        if isinstance(self.screen, JobDetailScreen):
            self.screen.audit_event(message.entry)

    @while_running
    def on_audit_pane_head(self, message: AuditPane.Head) -> None:
        self.main.header.audit = message.head

    # -- actions -----------------------------------------------------------------------------------

    async def action_quit(self) -> None:
        self._quit()

    @work(group="quit", exclusive=True)
    async def _quit(self) -> None:
        if self.embedded is not None:
            queue = self.embedded.daemon.queue.status()
            if queue["queued"] or queue["running"]:
                question = (f"This console runs the daemon (embedded). It has {queue['running']} running and "
                            f"{queue['queued']} queued job(s).\nQuitting stops the daemon: a running batch gets "
                            "its grace period, then goes back to the queue; queued jobs wait for the next start.")
                if not await self.push_screen_wait(ConfirmScreen("Quit and stop the daemon?", question, yes="Quit")):
                    return
            daemon = self.embedded.daemon
            await self.push_screen(StoppingScreen(daemon.config.daemon.shutdown_grace, daemon.queue.status))
            await self.embedded.stop_daemon()
        self.exit(0)

    def action_help(self) -> None:
        if isinstance(self.screen, HelpScreen):
            return
        self.push_screen(HelpScreen(help_groups(self, lambda action: bool(self.check_action(action_name(action), ())),
                                                self.readonly)))

    def action_refresh_all(self) -> None:
        self.links.retry_now()
        if self.link is not None and not self.link.connected:
            self.link.retry_now()
        elif self.link is not None:
            self.reload_all()

    def action_toggle_theme(self) -> None:
        self.theme = "textual-light" if self.theme == "textual-dark" else "textual-dark"

    def action_new_job(self) -> None:
        self.push_screen(NewJobScreen())

    def action_identify(self, path: str = "") -> None:
        self.push_screen(IdentifyScreen(path))

    def action_open_job(self, job_id: str) -> None:
        if not self.is_screen_installed("job-detail"):
            self.install_screen(JobDetailScreen(), "job-detail")
        detail = self.get_screen("job-detail")
        assert isinstance(detail, JobDetailScreen)
        detail.show(self.main.table.jobs.get(job_id, {"job_id": job_id}))
        self.push_screen(detail)

    def action_look(self, step: int) -> None:
        now = self.clock()
        moment = (self.lookback_at if self.lookback_at is not None else now) + step * LOOK_STEP
        if moment > now - LOOK_STEP / 2:
            self.action_live()
        else:
            self.look_at(moment)

    def action_live(self) -> None:
        if self.lookback_at is None:
            return
        self.lookback_at = None
        main = self.main
        main.banner.lookback = ""
        main.memory.show_history(None, "")
        self.reload_all()

    def look_at(self, moment: float) -> None:
        self.lookback_at = moment
        ago = duration(self.clock() - moment)
        self.main.banner.lookback = (f"LOOKING BACK: memory, alerts and audit as of {clock_time(moment)} ({ago} ago)"
                                     " — [ ] step 5 min, :live returns. The queue stays live.")
        self._apply_lookback(moment)

    @work(group="lookback", exclusive=True, exit_on_error=False)
    async def _apply_lookback(self, moment: float) -> None:
        main = self.main
        try:
            result = await self.rpc("metrics.history", since=moment - LOOK_WINDOW, until=moment)
        except Exception as exc:
            main.memory.show_history(None, f"metrics.history: {exc}; the figures below are live.")
        else:
            samples = result.get("samples", []) if isinstance(result, dict) else list(result or [])
            span = f"{clock_time(moment - LOOK_WINDOW)}–{clock_time(moment)}"
            main.memory.show_history(samples, f"history {span}: {len(samples)} per-minute samples" if samples else
                                     f"the daemon kept no metric samples for {span}; the figures below are live.")
        await main.alerts.reload(until=moment)
        try:
            await main.audit.show_at(moment)
        except Exception as exc:
            self.report("Audit look-back", exc)

    # -- command line and palette --------------------------------------------------------------

    def on_prompt_line_command(self, message: PromptLine.Command) -> None:
        self.execute(message.text)

    def execute(self, text: str) -> None:
        name, _, arg = text.strip().lstrip(":").partition(" ")
        name, arg = name.lower(), arg.strip()
        main = self.main
        if name == "at":
            try:
                self.look_at(parse_moment(arg, self.clock()))
            except ValueError as exc:
                self.notify(str(exc), severity="error")
        elif name == "filter":
            main.filter_pane().set_filter(arg)
        elif name == "sort" and arg in SORTS:
            main.table.set_sort(arg)
        elif name == "theme" and arg in ("dark", "light"):
            self.theme = f"textual-{arg}"
        elif name == "job" and arg:
            self.action_open_job(arg)
        elif name == "identify":
            self.action_identify(arg)
        elif name in ("pause", "resume"):
            if self.check_action("set_paused", ()):
                main.set_paused(name == "pause")
            else:
                self._refuse_read_only(name)
        elif (command := next((c for c in COMMANDS if c.name == name), None)) is not None:
            if self.check_action(action_name(command.action), ()):
                self.call_next(main.run_action, command.action)
            else:
                self._refuse_read_only(name)
        else:
            self.notify(f"unknown command {name!r} (try :help)", severity="error", timeout=10)

    def _refuse_read_only(self, name: str) -> None:
        self.notify(self.main.refusal(name), severity="warning")

    def get_system_commands(self, screen: Screen[Any]) -> Iterable[SystemCommand]:
        yield from super().get_system_commands(screen)
        for command in COMMANDS:
            if command.name and self.check_action(action_name(command.action), ()):
                keys = " " + escape(f"[{key_label(self, command.keys)}]") if command.keys else ""
                yield SystemCommand(command.title, command.help + keys, partial(self._palette, command))

    def _palette(self, command: Command) -> None:
        self.call_next(self.main.run_action, command.action)
