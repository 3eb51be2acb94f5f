"""The Unix socket server: accept, identify the peer, frame lines, dispatch, stream events.

Protocol framing lives here; what each method does lives in `daemon.api`.
"""

from __future__ import annotations

import asyncio
import fcntl
import grp
import logging
import os
import socket
from pathlib import Path
from typing import Any

from daemon import protocol
from daemon.api import registry
from daemon.auth import Peer, PeerRefused, identify
from daemon.config import Section
from daemon.events import EventBus, Subscription
from daemon.protocol import INTERNAL_ERROR, INVALID_REQUEST, NOT_PERMITTED, RpcError

log = logging.getLogger("sai.server")

MAX_IN_FLIGHT = 64


class AlreadyRunning(Exception):
    """Another daemon holds the lock or answers on the socket."""


class Connection:
    """One client: its identity, its writes (serialised), its event feed."""

    def __init__(self, peer: Peer, writer: asyncio.StreamWriter, bus: EventBus) -> None:
        self.peer = peer
        self.writer = writer
        self.bus = bus
        self.subscription: Subscription | None = None
        self._pump: asyncio.Task[None] | None = None
        self._lock = asyncio.Lock()
        self.closed = False

    async def send(self, message: Any) -> None:
        if self.closed:
            return
        async with self._lock:
            try:
                self.writer.write(protocol.encode(message))
                await self.writer.drain()
            except (ConnectionError, RuntimeError):
                self.closed = True

    def subscribe(self, topics: set[str]) -> set[str]:
        if self.subscription is None:
            self.subscription = self.bus.subscribe(topics)
            self._pump = asyncio.create_task(self._pump_events(self.subscription), name="sai-events")
        else:
            self.bus.subscribe(topics)  # validates the names
            self.subscription.topics |= topics
        return self.subscription.topics

    async def _pump_events(self, sub: Subscription) -> None:
        while not self.closed:
            item = await sub.get()
            if item is None:
                log.warning("closing the event feed of %s (pid %s): it fell too far behind", self.peer.user, self.peer.pid)
                self.writer.close()
                return
            await self.send(protocol.event(*item))

    def close(self) -> None:
        self.closed = True
        if self.subscription is not None:
            self.bus.unsubscribe(self.subscription)
        if self._pump is not None:
            self._pump.cancel()
        self.writer.close()


class SocketServer:
    def __init__(self, path: Path, daemon: Any, auth: Section, bus: EventBus, group: str = "") -> None:
        self.path = path
        self.daemon = daemon
        self.auth = auth
        self.bus = bus
        self.group = group
        self.connections: set[Connection] = set()
        self._server: asyncio.AbstractServer | None = None
        self._lock_fd: int | None = None
        self._tasks: set[asyncio.Task[Any]] = set()

    # -- socket lifecycle ------------------------------------------------------------------

    def _take_lock(self) -> None:
        lock_path = self.path.with_name(self.path.name + ".lock")
        fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.read(fd, 32).decode(errors="replace").strip() or "unknown"
            os.close(fd)
            raise AlreadyRunning(f"another daemon (pid {holder}) holds {lock_path}") from None
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        self._lock_fd = fd

    def _answers(self) -> bool:
        probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        probe.settimeout(1.0)
        try:
            probe.connect(str(self.path))
            return True
        except OSError:
            return False
        finally:
            probe.close()

    def _bind(self) -> socket.socket:
        """bind, chmod 0, chown to the group, chmod 0660, listen: never open wider than 0660."""
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        old_umask = os.umask(0o177)
        try:
            sock.bind(str(self.path))
        finally:
            os.umask(old_umask)
        os.chmod(self.path, 0)
        if self.group:
            os.chown(self.path, -1, grp.getgrnam(self.group).gr_gid)
        os.chmod(self.path, 0o660)
        sock.listen(128)
        sock.setblocking(False)
        return sock

    def claim(self) -> None:
        """Take the lock beside the socket and clear a stale socket file; before anything else opens."""
        if len(str(self.path).encode()) > 107:
            raise OSError(f"socket path {self.path} is longer than the 107 bytes Unix sockets allow")
        self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o750)
        self._take_lock()
        if self.path.exists() or self.path.is_symlink():
            if self._answers():
                self.release()
                raise AlreadyRunning(f"another daemon answers on {self.path}")
            log.warning("removing stale socket %s", self.path)
            self.path.unlink()

    def release(self) -> None:
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None

    async def start(self) -> None:
        sock = self._bind()
        self._server = await asyncio.start_unix_server(self._accept, sock=sock, limit=protocol.STREAM_LIMIT)
        log.info("listening on %s", self.path)

    async def stop_accepting(self) -> None:
        if self._server is not None:
            self._server.close()

    async def close(self) -> None:
        await self.stop_accepting()
        for conn in list(self.connections):
            conn.close()
        if self._server is not None:
            await self._server.wait_closed()
        try:
            self.path.unlink()
        except FileNotFoundError:
            pass
        self.release()

    # -- one connection --------------------------------------------------------------------

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            peer = identify(writer.get_extra_info("socket"), self.auth)
        except PeerRefused as exc:
            writer.write(protocol.encode(protocol.error(None, RpcError(NOT_PERMITTED, str(exc)))))
            writer.close()
            return
        conn = Connection(peer, writer, self.bus)
        self.connections.add(conn)
        slots = asyncio.Semaphore(MAX_IN_FLIGHT)
        try:
            await self._read_requests(conn, reader, slots)
        finally:
            self.connections.discard(conn)
            conn.close()

    async def _read_requests(self, conn: Connection, reader: asyncio.StreamReader, slots: asyncio.Semaphore) -> None:
        while not conn.closed:
            try:
                line = await reader.readuntil(b"\n")
            except asyncio.IncompleteReadError:
                return  # end of stream, perhaps mid-request: nothing to answer
            except asyncio.LimitOverrunError:
                await self._discard_line(reader)
                await conn.send(protocol.error(None, RpcError(
                    INVALID_REQUEST, f"invalid request: line longer than {protocol.MAX_LINE} bytes; closing")))
                return
            except ConnectionError:
                return
            if not line.strip():
                continue
            await slots.acquire()
            task = asyncio.create_task(self._answer(conn, line))
            self._tasks.add(task)
            task.add_done_callback(lambda t: (self._tasks.discard(t), slots.release()))

    @staticmethod
    async def _discard_line(reader: asyncio.StreamReader, budget: int = 64 * protocol.MAX_LINE,
                            timeout: float = 5.0) -> None:
        """Read past the rest of an overlong line (bounded), so the sender can read our error
        instead of meeting a reset connection."""
        async def drain() -> None:
            seen = 0
            while seen < budget:
                chunk = await reader.read(protocol.MAX_LINE)
                if not chunk or b"\n" in chunk:
                    return
                seen += len(chunk)

        try:
            await asyncio.wait_for(drain(), timeout)
        except (asyncio.TimeoutError, ConnectionError):
            pass

    async def _answer(self, conn: Connection, line: bytes) -> None:
        try:
            message = protocol.decode(line)
        except RpcError as exc:
            await conn.send(protocol.error(None, exc))
            return
        if isinstance(message, list):
            if not message:
                await conn.send(protocol.error(None, RpcError(INVALID_REQUEST, "invalid request: empty batch")))
                return
            replies = await asyncio.gather(*(self._call(conn, item) for item in message))
            replies = [reply for reply in replies if reply is not None]
            if replies:
                await conn.send(replies)
            return
        reply = await self._call(conn, message)
        if reply is not None:
            await conn.send(reply)

    async def _call(self, conn: Connection, message: Any) -> dict[str, Any] | None:
        try:
            req = protocol.parse_request(message)
        except RpcError as exc:
            return protocol.error(protocol.request_id_of(message), exc)
        try:
            method = registry.lookup(req.method)
            value = await registry.call(method, registry.CallContext(self.daemon, conn.peer, conn), req.params)
        except RpcError as exc:
            value, error = None, exc
        except Exception as exc:
            log.exception("%s failed", req.method)
            value, error = None, RpcError(INTERNAL_ERROR, f"internal error in {req.method}: {type(exc).__name__}; "
                                                          "the daemon log has the details")
        else:
            error = None
        if req.is_notification:
            return None
        return protocol.error(req.id, error) if error else protocol.result(req.id, value)
