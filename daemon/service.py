"""The daemon's lifecycle: `startup`, `serve`, `shutdown`, and signal handling, in one place."""

from __future__ import annotations

import asyncio
import fcntl
import logging
import os
import signal
import socket
import sys
import time
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any, TypeVar

from daemon import __version__, paths
from daemon.alarms import raise_alarm
from daemon.api import load_all
from daemon.api.limits import CallLimits
from daemon.assembly import Parts, Site, assemble
from daemon.audit.anchor import AuditTrustError
from daemon.audit.log import AuditKeyMismatch, AuditLog
from daemon.auth import Peer, in_process_peer
from daemon.background import BackgroundTasks, TaskFailure, shutdown_step
from daemon.config import Config, ConfigError
from daemon.crypto import OutputError
from daemon.crypto.keys import KeyStore
from daemon.crypto.passphrase import PassphraseSources
from daemon.dispatch import Box
from daemon.events import EventBus
from daemon.exitcodes import ExitCode
from daemon.fleet.errors import FleetError
from daemon.fleet.member import FleetMember
from daemon.framing import ConnectionLimits
from daemon.hardening import forbid_dumps, safe_python_children
from daemon.monitor.service import Monitor
from daemon.outputs.sink import KeyMaintenance
from daemon.ownership import UnsafePath, check_ancestors, check_state_dir
from daemon.queue.history import JobHistory
from daemon.queue.manager import QueueManager
from daemon.queue.store import JobStore
from daemon.safefiles import PRIVATE_UMASK, ensure_dir, narrow_to_owner, open_lock
from daemon.server import AlreadyRunning, SocketServer
from daemon.systemd import Notifier
from daemon.worker.supervisor import WorkerSupervisor

log = logging.getLogger("sai.daemon")

T = TypeVar("T")

EXIT_TASK_FAILED = ExitCode.TASK_FAILED
"""`sai daemon` exit status when a background task it cannot do without died (sysexits' EX_SOFTWARE);
systemd's Restart=on-failure starts it again."""
EXIT_UNCLEAN_STOP = 1
"""Exit status when a shutdown step failed or hung (the rest ran; the log names the step)."""
CLOSE_TIMEOUT = 30.0
"""Seconds each shutdown step but the drain may take before the next one runs anyway."""


class Daemon:
    def __init__(self, config: Config, socket_path: Path | None = None, state_dir: Path | None = None,
                 embedded: bool = False) -> None:
        self.config = config
        self.socket_path = socket_path or paths.socket_path(None, config.daemon.socket)
        self.state_dir = (state_dir or paths.state_dir(None, config.daemon.state_dir)).absolute()
        self.embedded = embedded
        self.installation = config.daemon.installation or socket.gethostname()
        self.outputs_dir = self.state_dir / "outputs"
        self.executor = ThreadPoolExecutor(max_workers=max(2, (os.cpu_count() or 2)), thread_name_prefix="sai-cpu")
        self.bus = EventBus()
        self.started_at = time.time()
        self._stop = asyncio.Event()
        self.drain_deadline: float | None = None
        """When the drain of a shutdown gives up on the running batch (time.time()); None while serving."""
        self._state_lock: int | None = None
        self._umask: int | None = None
        self.parts: Parts
        """The parts, built in order by daemon.assembly at start-up; the properties below name them."""
        self.server: SocketServer
        self.background = BackgroundTasks(self._background_task_failed)
        self.exit_code = 0
        self.own_peer = in_process_peer()
        self.passphrases = PassphraseSources.take(os.environ)  # no child ever inherits $SAI_PASSPHRASE
        self.call_limits = CallLimits.from_config(config.daemon)

    # -- lifecycle -------------------------------------------------------------------------

    def _lock_state(self) -> None:
        """Take the state dir for this daemon alone, and make it and what it holds private.

        Whatever umask the daemon was started with (`UMask=0077` in the systemd unit, often 022 by
        hand), the files it creates from here on are its user's alone; the socket is opened to its
        group explicitly (server.claim). Files an earlier run or a copy left wider are narrowed.
        A state dir another user owns, or could replace, is refused first (daemon.ownership).
        """
        uid = os.geteuid()
        check_ancestors(self.state_dir, uid, "state directory")
        umask = os.umask(PRIVATE_UMASK)
        try:
            self.state_dir.mkdir(parents=True, exist_ok=True)
            check_state_dir(self.state_dir, uid)
            fd = open_lock(self.state_dir / "daemon.lock")
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                raise AlreadyRunning(f"another daemon is using the state directory {self.state_dir}") from None
        except BaseException:
            os.umask(umask)
            raise
        self._state_lock, self._umask = fd, umask
        for sub in ("", "outputs", "models"):
            ensure_dir(self.state_dir / sub, 0o700)
        narrow_to_owner(self.state_dir)

    async def startup(self, handle_signals: bool = False) -> None:
        """Build the parts and start serving; with `handle_signals` (`sai daemon`), SIGTERM and SIGINT
        request a drain from the moment the socket answers (a stop sent then is never a hard kill)."""
        forbid_dumps()  # before any key is read: no core file, no same-user ptrace holds them
        load_all()
        self.server = SocketServer(self.socket_path, self, self.config.auth, self.bus,
                                   self.config.daemon.socket_group, ConnectionLimits.from_config(self.config.daemon))
        self.server.claim()
        try:
            self._lock_state()
        except BaseException:
            self.server.release()
            raise
        opened = AsyncExitStack()
        try:
            self.parts = await assemble(
                self.config, Site(self.state_dir, self.outputs_dir, self.socket_path, self.installation, self.embedded),
                bus=self.bus, background=self.background, executor=self.executor, run_blocking=self.run_blocking,
                passphrases=self.passphrases, own_peer=self.own_peer, opened=opened)
            await self._start_serving(handle_signals)
        except BaseException:
            await opened.aclose()  # what was opened, newest first
            self.server.release()
            self._release_state()
            raise

    async def _start_serving(self, handle_signals: bool) -> None:
        """Open the socket and start the work that runs beside it, once every part is built."""
        if handle_signals:
            self.install_signal_handlers()
        await self.server.start()
        self.background.start(self.dispatcher.run(), "dispatcher", "starting queued jobs", essential=True)
        self.background.start(self.key_maintenance.resume_outputs(), "output rewrap",
                              "re-wrapping outputs after a key rotation", essential=False, lasts=False)
        if self.config.model.preload:
            self.background.start(self.dispatcher.warm_up(), "model preload", "loading the model at start-up",
                                  essential=False, lasts=False)
        log.info("daemon %s started (pid %d, state %s, queue %s)", __version__, os.getpid(), self.state_dir,
                 "paused" if self.queue.paused else "running")

    # -- the parts, as handlers (daemon.api.registry.DaemonApi) and the lifecycle name them --------

    @property
    def keystore(self) -> KeyStore:
        return self.parts.keystore

    @property
    def audit(self) -> AuditLog:
        return self.parts.audit

    @property
    def store(self) -> JobStore:
        return self.parts.store

    @property
    def job_history(self) -> JobHistory:
        return self.parts.job_history

    @property
    def key_maintenance(self) -> KeyMaintenance:
        return self.parts.key_maintenance

    @property
    def queue(self) -> QueueManager:
        return self.parts.queue

    @property
    def worker(self) -> WorkerSupervisor:
        return self.parts.worker

    @property
    def dispatcher(self) -> Box:
        return self.parts.dispatcher

    @property
    def fleet(self) -> FleetMember | None:
        return self.parts.fleet

    @property
    def monitor(self) -> Monitor:
        return self.parts.monitor

    async def audit_action(self, peer: Peer | dict[str, Any] | None, action: str, subject: str,
                           details: dict[str, Any]) -> None:
        """Record a state change in the audit log. `peer` is who asked (a Peer, or an actor dict as
        the monitor keeps it); None means the daemon itself."""
        await self.parts.record(peer, action, subject, details)

    async def serve(self) -> None:
        await self._stop.wait()

    def request_stop(self) -> None:
        self._stop.set()

    def _background_task_failed(self, failure: TaskFailure) -> None:
        """A critical alert naming the task that died and what stopped with it (an alarm event: the
        background tasks exist before the alert book), raised even if the audit log is what died."""
        raise_alarm(self.bus, "task." + failure.name.replace(" ", "_"), failure.message(), failure.view(),
                    audited=False)
        if failure.essential:
            self.exit_code = EXIT_TASK_FAILED
            self.request_stop()

    async def shutdown(self) -> None:
        """Drain and close every part in order. A step that fails or hangs (the audit log or the job
        store whose committer died, say) is logged and the later steps still run, so the state lock
        is released and the process exits, with EXIT_UNCLEAN_STOP unless a worse status is set."""
        log.info("shutting down: no new connections, draining the running batch")
        self.background.stopping()
        grace = self.config.daemon.shutdown_grace
        self.drain_deadline = time.time() + grace
        self.bus.publish("queue", {"kind": "daemon.stopping", "drain_left": grace, **self.queue.status()})
        uptime = round(time.time() - self.started_at, 3)
        steps: list[tuple[str, Callable[[], Awaitable[Any]], float]] = [
            ("closing the socket to new connections", self.server.stop_accepting, CLOSE_TIMEOUT),
            ("draining the running batch", lambda: self.dispatcher.shutdown(grace), grace + CLOSE_TIMEOUT),
            ("stopping background tasks", self.background.cancel_started, CLOSE_TIMEOUT),
            ("finishing alerts and audit entries in flight", self.parts.reactions.drain, CLOSE_TIMEOUT),
            ("recording the models' unloads", self.queue.models.close, CLOSE_TIMEOUT),
            ("closing the monitor", self.monitor.close, CLOSE_TIMEOUT),
            ("closing client connections", self.server.close, CLOSE_TIMEOUT),
            ("closing the job history", self.job_history.close, CLOSE_TIMEOUT),
            ("closing the job store", self.store.close, CLOSE_TIMEOUT),
            ("recording daemon.stop", lambda: self.audit_action(None, "daemon.stop", self.installation,
                                                                {"uptime": uptime}), CLOSE_TIMEOUT),
            ("closing the audit log", self.audit.close, CLOSE_TIMEOUT),
        ]
        if self.fleet is not None:  # after the batch was drained: the box's row goes, then its connections
            steps.insert(3, ("leaving the fleet", self.fleet.leave, CLOSE_TIMEOUT))
        clean = True
        for what, action, timeout in steps:
            clean = await shutdown_step(what, action, timeout) and clean
        self.executor.shutdown(wait=True)
        self._release_state()
        if not clean and self.exit_code == 0:
            self.exit_code = EXIT_UNCLEAN_STOP
        log.info("daemon stopped" if clean else "daemon stopped; some shutdown steps failed (see above)")

    def _release_state(self) -> None:
        if self._state_lock is not None:
            os.close(self._state_lock)
            self._state_lock = None
        if self._umask is not None:
            os.umask(self._umask)
            self._umask = None

    def install_signal_handlers(self) -> None:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self._on_signal, sig)

    def _on_signal(self, sig: signal.Signals) -> None:
        log.info("received %s", sig.name)
        self.request_stop()

    async def run_blocking(self, fn: Callable[..., T], *args: Any) -> T:
        """Run CPU-heavy or blocking work in the thread pool, never on the event loop."""
        return await asyncio.get_running_loop().run_in_executor(self.executor, fn, *args)

    # -- what status reports -----------------------------------------------------------------

    def health_problem(self) -> str | None:
        """Why the daemon cannot keep its promises right now (systemd's watchdog goes unfed), or None."""
        if self.background.fatal is not None:
            return self.background.fatal.message()
        worker = self.config.worker
        return self.dispatcher.heartbeat_problem(silence=5 * worker.heartbeat_seconds, stall=worker.stall_seconds)

    def describe(self) -> str:
        """One line for systemd's STATUS=: queue and worker state."""
        queue = self.queue.status()
        return (f"queue {'paused' if queue['paused'] else 'running'}: {queue['queued']} queued, "
                f"{queue['running']} running; {self.dispatcher.describe()}")

    def status(self, peer: Peer) -> dict[str, Any]:
        return {
            "version": __version__,
            "pid": os.getpid(),
            "installation": self.installation,
            "host": socket.gethostname(),
            "embedded": self.embedded,
            "socket": str(self.socket_path),
            "state_dir": str(self.state_dir),
            "started_at": self.started_at,
            "uptime": round(time.time() - self.started_at, 3),
            "stopping": None if self.drain_deadline is None else
            {"drain_left": round(max(0.0, self.drain_deadline - time.time()), 1)},
            "queue": self.queue.status(),
            "worker": self.dispatcher.worker_view(),
            "workers": self.dispatcher.workers(),
            "model": {"name": self.config.model.name, "path": self.config.model.path},
            "audit": {"size": self.audit.size, "anchor": self.audit.trust.status() if self.audit.trust else None},
            "you": {"user": peer.user, "uid": peer.uid, "role": peer.role.label},
            "tasks": {"failed": [failure.view() for failure in self.background.failures]},
            "alerts": {"critical": [{"id": a["id"], "key": a["key"], "message": a["message"]}
                                    for a in self.monitor.alerts.open_alerts.values()
                                    if a["severity"] == "critical" and a["state"] == "active"]},
        }


async def run(config: Config, socket_path: Path | None, state_dir: Path | None) -> int:
    """`sai daemon`: run in the foreground until SIGTERM or SIGINT; exit 0 after a clean drain."""
    # The output path's CPU work runs in threads; a short GIL switch interval keeps the event loop
    # (dispatch, commits, replies) responsive while it does (bench/overhead.py measures the effect).
    sys.setswitchinterval(0.0005)
    safe_python_children()
    daemon = Daemon(config, socket_path, state_dir)
    try:
        await daemon.startup(handle_signals=True)
    except (AlreadyRunning, ConfigError, OutputError, AuditTrustError, AuditKeyMismatch, UnsafePath, FleetError) as exc:
        log.error("not starting: %s", exc)
        return ExitCode.ALREADY_RUNNING if isinstance(exc, AlreadyRunning) else ExitCode.NOT_STARTED
    except Exception:  # a fault no check foresaw: said in the log with its traceback, never a quiet exit 0
        log.critical("not starting: an unexpected error during start-up", exc_info=True)
        return ExitCode.NOT_STARTED
    notifier = Notifier.from_environment()
    notifier.ready(f"serving on {daemon.socket_path}; {daemon.describe()}")
    keep_alive = asyncio.create_task(notifier.keep_alive(daemon.describe, daemon.health_problem), name="sai-systemd")
    daemon.background.watch(keep_alive, "systemd notifier", "STATUS= lines and watchdog pings to systemd",
                            essential=False)
    try:
        await daemon.serve()
    finally:
        daemon.background.stopping()
        keep_alive.cancel()
        notifier.stopping(f"draining: up to {daemon.config.daemon.shutdown_grace:.0f} s for the running batch")
        await daemon.shutdown()
        notifier.close()
    return daemon.exit_code
