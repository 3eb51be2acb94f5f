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
import time
from collections import Counter
from pathlib import Path
from typing import Any

from daemon import protocol
from daemon.api import registry
from daemon.api.registry import DaemonApi
from daemon.auth import Peer, PeerRefused, Role, identify
from daemon.config import Section
from daemon.connection import Connection, idle_victim
from daemon.events import EventBus
from daemon.framing import READ_CHUNK, ConnectionLimits, InFlight, LineReader, LineTimeout, LineTooLong
from daemon.ownership import check_ancestors, check_shared_dir
from daemon.protocol import INTERNAL_ERROR, INVALID_REQUEST, NOT_PERMITTED, RATE_LIMITED, UNAVAILABLE, RpcError
from daemon.safefiles import PrivateDir, open_lock

log = logging.getLogger("sai.server")

MAX_IN_FLIGHT = 64
MAX_IN_FLIGHT_BYTES = 4 * protocol.MAX_LINE
REFUSAL_LOG_INTERVAL = 10.0
BIND_NAME = "s"


def oversized(reply: Any, size: int) -> dict[str, Any]:
    """What is sent instead of a reply longer than a line may be (one method's, or a batch's
    replies together): an error that says so, where the whole line would have made the client's
    reader fail and drop its connection."""
    what = "the batch's replies together" if isinstance(reply, list) else "the reply"
    log.error("%s would take %d bytes, over the %d-byte line limit; an error was sent instead", what, size,
              protocol.MAX_LINE)
    return protocol.error(reply.get("id") if isinstance(reply, dict) else None, RpcError(
        INTERNAL_ERROR, f"{what} would take {size} bytes, over the line limit of {protocol.MAX_LINE}; ask for less "
                        "at a time (a smaller limit, or fewer requests in a batch)",
        {"reason": "reply_too_large", "bytes": size}))


class AlreadyRunning(Exception):
    """Another daemon holds the lock or answers on the socket."""


class SocketServer:
    def __init__(self, path: Path, daemon: DaemonApi, auth: Section, bus: EventBus, group: str = "",
                 limits: ConnectionLimits = ConnectionLimits()) -> None:
        """`daemon`: what the method handlers are given (`CallContext.daemon`). It is built before
        the parts it names exist (the socket is claimed first); no call is answered until `start()`."""
        self.path = path
        self.daemon = daemon
        self.auth = auth
        self.bus = bus
        self.group = group
        self.limits = limits
        self.connections: set[Connection] = set()
        self._per_uid: Counter[int] = Counter()
        self._user_in_flight: dict[int, InFlight] = {}
        self._refused: Counter[str] = Counter()
        self._refusals_logged_at = 0.0
        self._server: asyncio.AbstractServer | None = None
        self._lock_fd: int | None = None
        self._tasks: set[asyncio.Task[Any]] = set()

    # -- socket lifecycle ------------------------------------------------------------------

    def _take_lock(self) -> None:
        lock_path = self.path.with_name(self.path.name + ".lock")
        fd = open_lock(lock_path)
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
        """bind in a fresh private directory beside the socket (0600; reached through its descriptor),
        chown to the group and chmod 0660 there, listen, then rename onto the socket path: no chmod
        or chown goes through a name another user could swap for a symlink, and the socket is never
        open wider than 0660."""
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        gid = grp.getgrnam(self.group).gr_gid if self.group else -1
        with PrivateDir(self.path) as private:
            old_umask = os.umask(0o177)
            try:
                sock.bind(f"/proc/self/fd/{private.fd}/{BIND_NAME}")
            finally:
                os.umask(old_umask)
            os.chown(BIND_NAME, -1, gid, dir_fd=private.fd, follow_symlinks=False)
            os.chmod(BIND_NAME, 0o660, dir_fd=private.fd)
            sock.listen(128)
            private.move_out(BIND_NAME)
        sock.setblocking(False)
        return sock

    def claim(self) -> None:
        """Take the lock beside the socket and clear a stale socket file; before anything else opens."""
        if len(str(self.path).encode()) > 107:
            raise OSError(f"socket path {self.path} is longer than the 107 bytes Unix sockets allow")
        uid = os.geteuid()
        check_ancestors(self.path.parent, uid, "socket directory")
        self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o750)
        check_shared_dir(self.path.parent, uid, "socket directory")
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
        self._server = await asyncio.start_unix_server(self._accept, sock=sock, limit=READ_CHUNK)
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
            self._refuse(writer, "no role", RpcError(NOT_PERMITTED, str(exc)))
            return
        if not self._room_for(peer):
            limit = self.limits.max_connections
            self._refuse(writer, "connections", RpcError(
                UNAVAILABLE, f"the daemon already serves {len(self.connections)} connections, the most it accepts "
                             f"(daemon.max_connections {limit}, of which admin_reserve_connections "
                             f"{self.limits.admin_reserve_connections} for admins) and none has been idle for "
                             f"{self.limits.idle_timeout:g} s (daemon.idle_timeout); try again when some have closed",
                {"reason": "connections", "limit": limit}))
            return
        if self._per_uid[peer.uid] >= self.limits.max_connections_per_user:
            limit = self.limits.max_connections_per_user
            self._refuse(writer, f"{peer.user}'s connections", RpcError(
                RATE_LIMITED, f"{peer.user} already has {limit} connections open, the most one user may "
                              "(daemon.max_connections_per_user); close some and try again",
                {"retry_after": None, "limit": limit}))
            return
        conn = Connection(peer, writer, self.bus, self.limits)
        self.connections.add(conn)
        self._per_uid[peer.uid] += 1
        try:
            await self._read_requests(conn, LineReader(reader, self.limits.line_timeout))
        finally:
            conn.close()
            # The connection counts against its user until the requests it started are done, so
            # that reconnecting cannot pile up work the daemon is still doing for closed ones.
            if conn.answering:
                await asyncio.gather(*conn.answering, return_exceptions=True)
            self.connections.discard(conn)
            self._per_uid[peer.uid] -= 1
            if not self._per_uid[peer.uid]:
                del self._per_uid[peer.uid]
                self._user_in_flight.pop(peer.uid, None)

    def _room_for(self, peer: Peer) -> bool:
        """Whether `peer` may have one more connection: under the limit for its role (admins may use
        the reserve), or once the longest idle connection has been closed to make room."""
        limit = self.limits.max_connections
        if peer.role < Role.ADMIN:
            limit -= self.limits.admin_reserve_connections
        if len(self.connections) < limit:
            return True
        victim = idle_victim(self.connections, peer, self.limits.idle_timeout)
        if victim is None:
            return False
        victim.drop(f"idle for {self.limits.idle_timeout:g} s or more while the daemon was full; closed to make "
                    f"room for {peer.user} (daemon.idle_timeout)")
        self.connections.discard(victim)
        return True

    def _refuse(self, writer: asyncio.StreamWriter, why: str, error: RpcError) -> None:
        """One error line, then close. Logged as a count at most every REFUSAL_LOG_INTERVAL
        seconds, so that a flood of connections does not flood the log too."""
        writer.write(protocol.encode(protocol.error(None, error)))
        writer.close()
        self._refused[why] += 1
        now = time.monotonic()
        if now - self._refusals_logged_at >= REFUSAL_LOG_INTERVAL:
            self._refusals_logged_at = now
            counts = ", ".join(f"{n} ({reason})" for reason, n in self._refused.items())
            log.warning("refused connection(s) over a limit: %s", counts)
            self._refused.clear()

    async def _read_requests(self, conn: Connection, lines: LineReader) -> None:
        in_flight = InFlight(MAX_IN_FLIGHT, MAX_IN_FLIGHT_BYTES)
        user_in_flight = self._in_flight_of(conn.peer)
        while not conn.closed:
            try:
                line = await lines.readline()
            except LineTooLong:
                await lines.discard_rest()
                await conn.send(protocol.error(None, RpcError(
                    INVALID_REQUEST, f"invalid request: line longer than {protocol.MAX_LINE} bytes; closing")))
                return
            except LineTimeout:
                await conn.send(protocol.error(None, RpcError(
                    INVALID_REQUEST, f"invalid request: line not finished within {self.limits.line_timeout:g} s "
                                     "(daemon.line_timeout); closing")))
                return
            except ConnectionError:
                return
            if line is None:
                return  # end of stream, perhaps mid-request: nothing to answer
            conn.last_active = time.monotonic()
            if not line.strip():
                continue
            size = len(line)
            await conn.room_for_replies()
            await in_flight.acquire(size)
            await user_in_flight.acquire(0)
            task = asyncio.create_task(self._answer(conn, line))
            self._tasks.add(task)
            conn.answering.add(task)

            def answered(task: asyncio.Task[None], size: int = size) -> None:
                self._tasks.discard(task)
                conn.answering.discard(task)
                in_flight.release(size)
                user_in_flight.release(0)

            task.add_done_callback(answered)

    def _in_flight_of(self, peer: Peer) -> InFlight:
        """The budget all of `peer`'s connections share (`max_in_flight_per_user`); admins' is
        the sum of their connections' own."""
        if peer.role >= Role.ADMIN:
            return InFlight(self.limits.max_connections * MAX_IN_FLIGHT, 0)
        budget = self._user_in_flight.get(peer.uid)
        if budget is None:
            budget = self._user_in_flight[peer.uid] = InFlight(self.limits.max_in_flight_per_user, 0)
        return budget

    async def _answer(self, conn: Connection, line: bytes) -> None:
        try:
            await conn.room_for_replies()
            if conn.closed:
                return
            reply = await self._reply_to(conn, line)
            del line
            if reply is not None:
                # Encoded now and the objects dropped: a task waiting in send holds bytes only,
                # and those count against max_unread_bytes.
                data = protocol.encode(reply)
                if len(data) > protocol.MAX_LINE:  # a client's reader would fail on it and drop the connection
                    data = protocol.encode(oversized(reply, len(data)))
                del reply
                await conn.send(data)
        except Exception:
            log.exception("answering a request from %s (pid %s) failed", conn.peer.user, conn.peer.pid)
            await conn.send(protocol.error(None, RpcError(
                INTERNAL_ERROR, "internal error answering a request; the daemon log has the details")))

    async def _reply_to(self, conn: Connection, line: bytes) -> Any:
        try:
            message = protocol.decode(line, strict=True)
        except RpcError as exc:
            return protocol.error(None, exc)
        if not isinstance(message, list):
            return await self._call(conn, message)
        if not message:
            return protocol.error(None, RpcError(INVALID_REQUEST, "invalid request: empty batch"))
        if len(message) > self.limits.max_batch_requests:
            return protocol.error(None, RpcError(
                INVALID_REQUEST, f"invalid request: a batch of {len(message)} requests; at most "
                                 f"{self.limits.max_batch_requests} per batch (daemon.max_batch_requests)"))
        replies = await asyncio.gather(*(self._call(conn, item) for item in message))
        return [reply for reply in replies if reply is not None] or None

    async def _call(self, conn: Connection, message: Any) -> dict[str, Any] | None:
        try:
            req = protocol.parse_request(message)
        except RpcError as exc:
            return protocol.error(protocol.request_id_of(message), exc)
        error: RpcError | None
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
