"""The console's links to daemons: connect, subscribe, turn events into Textual messages, and
reconnect with backoff when the daemon goes away. The primary link (the daemon the console is
attached to) posts to the app; a fleet member's console has one more per box its client config maps
(console.fleetlinks), whose messages carry that box's name. Also starts an embedded daemon."""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from textual.message import Message

from daemon.client import DaemonClient, DaemonUnavailable
from daemon.logs import plain_formatter
from daemon.protocol import RpcError

if TYPE_CHECKING:
    from textual.dom import DOMNode

    from daemon.config import Config
    from daemon.service import Daemon

TOPICS = ["job", "queue", "metrics", "alert", "audit"]


class LinkMessage(Message):
    """A message from a link: `box` is the box of an extra link (console.fleetlinks), None from the
    primary link, so that a handler can tell which daemon it came from."""

    box: str | None = None


class LinkUp(LinkMessage):
    """Connected and subscribed: time to (re)load everything."""


@dataclass
class LinkDown(LinkMessage):
    reason: str
    retry_in: float
    attempt: int


@dataclass
class JobChanged(LinkMessage):
    """A job changed state (or priority): `job` is the job object without its prompt."""

    job: dict[str, Any]


@dataclass
class JobProgress(LinkMessage):
    job_id: str
    progress: float
    step: int
    steps: int

    def can_replace(self, message: Message) -> bool:
        return isinstance(message, JobProgress) and message.job_id == self.job_id


@dataclass
class QueueChanged(LinkMessage):
    data: dict[str, Any]


@dataclass
class MetricsSample(LinkMessage):
    data: dict[str, Any]

    def can_replace(self, message: Message) -> bool:
        return isinstance(message, MetricsSample)


@dataclass
class AlertChanged(LinkMessage):
    data: dict[str, Any]


@dataclass
class AuditAppended(LinkMessage):
    entry: dict[str, Any]


def event_message(event: dict[str, Any]) -> LinkMessage | None:
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


class WrongBox(Exception):
    """An extra link's socket reaches another box than the one the client config maps it to."""


class DaemonLink:
    """Owns one client. `start()` runs the pump as a worker of `target`, which gets its messages;
    `call()` goes to the daemon. With `box` set (an extra link of a fleet member's console), the
    daemon must say it is that box (`daemon.status` `installation`) before the link subscribes, and
    every message carries the box."""

    def __init__(self, target: DOMNode, socket_path: str, first_delay: float = 0.5, max_delay: float = 10.0, *,
                 box: str | None = None, topics: Sequence[str] = TOPICS) -> None:
        self.target = target
        self.socket_path = socket_path
        self.first_delay = first_delay
        self.max_delay = max_delay
        self.box = box
        self.topics = topics
        self.client: DaemonClient | None = None
        self.wake = asyncio.Event()
        self._dropped: str | None = None

    @property
    def connected(self) -> bool:
        return self.client is not None and not self.client.closed

    def start(self) -> None:
        name = "daemon-link" if self.box is None else f"fleet-link-{self.box}"
        self.target.run_worker(self._pump(), name=name, group=name, exclusive=True, exit_on_error=False)

    def retry_now(self) -> None:
        """Skip the rest of the backoff wait (the operator asked to refresh)."""
        self.wake.set()

    async def call(self, method: str, /, **params: Any) -> Any:
        client = self.client
        if client is None or client.closed:
            raise DaemonUnavailable(f"not connected to the daemon on {self.socket_path}")
        return await client.call(method, **params)

    async def drop(self, reason: str) -> None:
        """Close the connection (its daemon stopped answering on it): the pump reports `reason` and
        reconnects with its backoff."""
        if (client := self.client) is not None:
            self._dropped = reason
            await client.close()

    def _post(self, message: LinkMessage) -> None:
        message.box = self.box
        self.target.post_message(message)

    async def _connect(self) -> DaemonClient:
        client = await DaemonClient.connect(self.socket_path, timeout=3.0)
        try:
            if self.box is not None:
                await self._check_box(client)
            await asyncio.wait_for(client.call("events.subscribe", topics=list(self.topics)), 5.0)
        except BaseException:
            await client.close()
            raise
        return client

    async def _check_box(self, client: DaemonClient) -> None:
        status = await asyncio.wait_for(client.call("daemon.status"), 5.0)
        found = status.get("installation") if isinstance(status, dict) else None
        if found != self.box:
            raise WrongBox(f"{self.socket_path} reaches box {found!r}, not {self.box!r}: fix the socket this "
                           "client's [fleet] sockets gives for it")

    async def _pump(self) -> None:
        delay, attempt = self.first_delay, 0
        while True:
            try:
                client = await self._connect()
            except (TimeoutError, DaemonUnavailable, RpcError, OSError, WrongBox) as exc:
                attempt += 1
                reason = str(exc) or "the daemon did not answer"
                self._post(LinkDown(reason, delay, attempt))
                await self._sleep(delay)
                delay = min(delay * 2, self.max_delay)
                continue
            self.client, delay, attempt = client, self.first_delay, 0
            self._post(LinkUp())
            try:
                async for event in client.events():
                    message = event_message(event)
                    if message is not None:
                        self._post(message)
            finally:
                self.client = None
                await client.close()
            reason, self._dropped = self._dropped or "the daemon closed the connection", None
            self._post(LinkDown(reason, delay, 1))
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
