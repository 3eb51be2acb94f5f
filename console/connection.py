"""The console's link to the daemon: connect, subscribe, turn events into Textual messages,
and reconnect with backoff when the daemon goes away. Also starts an embedded daemon."""

from __future__ import annotations

import asyncio
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from textual.message import Message

from daemon.client import DaemonClient, DaemonUnavailable
from daemon.logs import plain_formatter
from daemon.protocol import RpcError

if TYPE_CHECKING:
    from textual.app import App

    from daemon.config import Config
    from daemon.service import Daemon

TOPICS = ["job", "queue", "metrics", "alert", "audit"]


class LinkUp(Message):
    """Connected and subscribed: time to (re)load everything."""


@dataclass
class LinkDown(Message):
    reason: str
    retry_in: float
    attempt: int


@dataclass
class JobChanged(Message):
    """A job changed state (or priority): `job` is the job object without its prompt."""

    job: dict[str, Any]


@dataclass
class JobProgress(Message):
    job_id: str
    progress: float
    step: int
    steps: int

    def can_replace(self, message: Message) -> bool:
        return isinstance(message, JobProgress) and message.job_id == self.job_id


@dataclass
class QueueChanged(Message):
    data: dict[str, Any]


@dataclass
class MetricsSample(Message):
    data: dict[str, Any]

    def can_replace(self, message: Message) -> bool:
        return isinstance(message, MetricsSample)


@dataclass
class AlertChanged(Message):
    data: dict[str, Any]


@dataclass
class AuditAppended(Message):
    entry: dict[str, Any]


def event_message(event: dict[str, Any]) -> Message | None:
    topic, data = event.get("topic"), event.get("data") or {}
    if topic == "job":
        if data.get("kind") == "progress":
            return JobProgress(data["job_id"], float(data.get("progress", 0.0)), int(data.get("step", 0)),
                               int(data.get("steps", 0)))
        if isinstance(data.get("job"), dict):
            return JobChanged(data["job"])
        return None
    if topic == "queue":
        return QueueChanged(data)
    if topic == "metrics":
        return MetricsSample(data)
    if topic == "alert":
        return AlertChanged(data)
    if topic == "audit":
        entry = data.get("entry", data)
        return AuditAppended(entry) if isinstance(entry, dict) else None
    return None


class DaemonLink:
    """Owns the client. `start()` runs the pump as an app worker; `call()` goes to the daemon."""

    def __init__(self, app: App[Any], socket_path: str, first_delay: float = 0.5, max_delay: float = 10.0) -> None:
        self.app = app
        self.socket_path = socket_path
        self.first_delay = first_delay
        self.max_delay = max_delay
        self.client: DaemonClient | None = None
        self.wake = asyncio.Event()

    @property
    def connected(self) -> bool:
        return self.client is not None and not self.client.closed

    def start(self) -> None:
        self.app.run_worker(self._pump(), name="daemon-link", group="link", exclusive=True, exit_on_error=False)

    def retry_now(self) -> None:
        """Skip the rest of the backoff wait (the operator asked to refresh)."""
        self.wake.set()

    async def call(self, method: str, /, **params: Any) -> Any:
        client = self.client
        if client is None or client.closed:
            raise DaemonUnavailable(f"not connected to the daemon on {self.socket_path}")
        return await client.call(method, **params)

    async def _connect(self) -> DaemonClient:
        client = await DaemonClient.connect(self.socket_path, timeout=3.0)
        try:
            await asyncio.wait_for(client.call("events.subscribe", topics=TOPICS), 5.0)
        except BaseException:
            await client.close()
            raise
        return client

    async def _pump(self) -> None:
        delay, attempt = self.first_delay, 0
        while True:
            try:
                client = await self._connect()
            except (TimeoutError, DaemonUnavailable, RpcError, OSError) as exc:
                attempt += 1
                reason = str(exc) or "the daemon did not answer"
                self.app.post_message(LinkDown(reason, delay, attempt))
                await self._sleep(delay)
                delay = min(delay * 2, self.max_delay)
                continue
            self.client, delay, attempt = client, self.first_delay, 0
            self.app.post_message(LinkUp())
            try:
                async for event in client.events():
                    message = event_message(event)
                    if message is not None:
                        self.app.post_message(message)
            finally:
                self.client = None
                await client.close()
            self.app.post_message(LinkDown("the daemon closed the connection", delay, 1))
            await self._sleep(delay)

    async def _sleep(self, delay: float) -> None:
        self.wake.clear()
        try:
            await asyncio.wait_for(self.wake.wait(), delay)
        except TimeoutError:
            pass


@dataclass
class Embedded:
    """A daemon running in this process and event loop; fd 2 points at its log while it runs."""

    daemon: Daemon
    log_path: Path
    terminal_fd: int | None = None
    log_handlers: tuple[list[logging.Handler], bool] = ([], True)
    _shutdown: asyncio.Future[None] | None = None

    async def stop_daemon(self) -> None:
        """Shut the daemon down (once, however often asked): the console shows its drain while
        `stop`, after the app has exited, waits for the same shutdown and restores the terminal."""
        if self._shutdown is None:
            self._shutdown = asyncio.ensure_future(self.daemon.shutdown())
        await asyncio.shield(self._shutdown)

    async def stop(self) -> None:
        try:
            await self.stop_daemon()
        finally:
            root = logging.getLogger("sai")
            for handler in root.handlers:
                handler.close()
            root.handlers[:], root.propagate = self.log_handlers
            if self.terminal_fd is not None:
                os.dup2(self.terminal_fd, 2)
                os.close(self.terminal_fd)
                self.terminal_fd = None


async def start_embedded(config: Config, socket_path: Path, state_dir: Path | None,
                         redirect_stderr: bool = True) -> Embedded:
    """Start the daemon in this loop. Its log (and the worker's stderr, via fd 2) goes to a file
    in the state dir so that nothing writes over the console; the terminal stays on a dup of fd 2."""
    from daemon.service import Daemon

    daemon = Daemon(config, socket_path, state_dir, embedded=True)
    daemon.state_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    log_path = daemon.state_dir / "embedded-daemon.log"
    os.close(os.open(log_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600))  # private before the first line
    handler = logging.FileHandler(log_path)
    handler.setFormatter(plain_formatter())
    root = logging.getLogger("sai")
    previous = (list(root.handlers), root.propagate)
    root.handlers[:] = [handler]
    root.setLevel(str(config.daemon.log_level).upper())
    root.propagate = False
    embedded = Embedded(daemon, log_path, log_handlers=previous)
    if redirect_stderr:
        embedded.terminal_fd = os.dup(2)
        log_fd = os.open(log_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        os.dup2(log_fd, 2)
        os.close(log_fd)
    try:
        await daemon.startup()
    except BaseException:
        if embedded.terminal_fd is not None:
            os.dup2(embedded.terminal_fd, 2)
            os.close(embedded.terminal_fd)
        raise
    return embedded
