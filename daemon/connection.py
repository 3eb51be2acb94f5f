"""One client connection: its identity, its writes (serialised, and bounded for a client that
stops reading), back-pressure on its replies, and its event feed."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Iterable
from typing import Any

from daemon import protocol
from daemon.audit.views import entry_view
from daemon.auth import Peer, Role
from daemon.events import EventBus, Subscription
from daemon.framing import MIB, ConnectionLimits

log = logging.getLogger("sai.server")

REPLY_BACKLOG = 1 * MIB
"""Unread reply bytes past which a connection's next requests wait (are not read, not answered)."""


class Connection:
    """One client: its identity, its writes (serialised, and bounded for a client that stops
    reading), its event feed."""

    def __init__(self, peer: Peer, writer: asyncio.StreamWriter, bus: EventBus,
                 limits: ConnectionLimits = ConnectionLimits()) -> None:
        self.peer = peer
        self.writer = writer
        self.bus = bus
        self.limits = limits
        self.subscription: Subscription | None = None
        self._pump: asyncio.Task[None] | None = None
        self._lock = asyncio.Lock()
        self._unread = 0
        self._room = asyncio.Event()
        self._room.set()
        self.answering: set[asyncio.Task[None]] = set()
        self.last_active = time.monotonic()
        """When the client last sent a request (or connected)."""
        self.closed = False

    async def room_for_replies(self) -> None:
        """Wait while more than REPLY_BACKLOG bytes of replies and events wait for this client to
        read them: a client that stops reading stops having its requests read and answered, so
        the replies it does not read never pile up in the daemon (back-pressure on replies)."""
        while not self.closed and self._unread > REPLY_BACKLOG:
            self._room.clear()
            await self._room.wait()

    async def send(self, message: Any) -> None:
        """Write one message. Past `max_unread_bytes` already waiting to go out on this connection,
        or a write the client does not take within `write_timeout`, the connection is dropped: a
        client that stops reading costs the daemon a bounded buffer for a bounded time."""
        if self.closed:
            return
        data = message if isinstance(message, bytes) else protocol.encode(message)
        written = False
        if not self._lock.locked() and not self.writer.transport.get_write_buffer_size():
            # Nothing is waiting to go out: the socket usually takes the whole reply at once, and
            # then there is nothing to wait for (no lock, no timer task: most replies end here).
            try:
                self.writer.write(data)
            except (ConnectionError, RuntimeError):
                self.closed = True
                return
            if not self.writer.transport.get_write_buffer_size():
                return
            written = True  # queued in the transport: wait for it below like any other reply
        self._unread += len(data)
        try:
            if self._unread - len(data) > self.limits.max_unread_bytes:
                self.drop(f"it left more than {self.limits.max_unread_bytes / MIB:g} MiB unread (daemon.max_unread_mb)")
                return
            async with self._lock:
                if self.closed:
                    return
                try:
                    if not written:
                        self.writer.write(data)
                    await asyncio.wait_for(self.writer.drain(), self.limits.write_timeout)
                except TimeoutError:
                    self.drop(f"it read nothing for {self.limits.write_timeout:g} s (daemon.write_timeout)")
                except (ConnectionError, RuntimeError):
                    self.closed = True
        finally:
            self._unread -= len(data)
            if self._unread <= REPLY_BACKLOG:
                self._room.set()

    def idle_for(self, now: float) -> float:
        """Seconds since the client last sent anything, 0 while one of its requests is being answered."""
        return 0.0 if self.answering else now - self.last_active

    def subscribe(self, topics: set[str]) -> set[str]:
        if self.subscription is None:
            self.subscription = self.bus.subscribe(topics)
            self._pump = asyncio.create_task(self._pump_events(self.subscription), name="sai-events")
        else:
            self.bus.subscribe(topics)  # validates the names
            self.subscription.topics.update(topics)
        return self.subscription.topics

    async def _pump_events(self, sub: Subscription) -> None:
        while not self.closed:
            item = await sub.get()
            if item is None:
                self.drop("its event feed fell too far behind")
                return
            topic, data = item
            view = entry_view(data, self.peer.uid, self.peer.role >= Role.ADMIN) if topic == "audit" else data
            await self.send(protocol.event(topic, view))

    def drop(self, reason: str) -> None:
        """Close at once, discarding what it has not read (closing politely would wait for a
        reader that is not reading)."""
        if self.closed:
            return
        log.warning("closing the connection of %s (pid %s): %s", self.peer.user, self.peer.pid, reason)
        self.close(abort=True)

    def close(self, abort: bool = False) -> None:
        self.closed = True
        self._room.set()
        if self.subscription is not None:
            self.bus.unsubscribe(self.subscription)
        if self._pump is not None and self._pump is not asyncio.current_task():
            self._pump.cancel()
        if abort:
            self.writer.transport.abort()
        else:
            self.writer.close()


def idle_victim(connections: Iterable[Connection], newcomer: Peer, idle_timeout: float) -> Connection | None:
    """The connection to close so that `newcomer` can have one when the daemon is full: of those
    silent for `idle_timeout` seconds or more, one without an event subscription before one with,
    the longest silent first; an admin's only to make room for another admin. None: no such one."""
    now = time.monotonic()
    idle = [conn for conn in connections
            if not conn.closed and conn.idle_for(now) >= idle_timeout
            and (conn.peer.role < Role.ADMIN or newcomer.role >= Role.ADMIN)]
    return min(idle, key=lambda conn: (conn.subscription is not None, conn.last_active), default=None)
