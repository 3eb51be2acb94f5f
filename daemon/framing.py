"""Reading newline-framed requests within bounds, and the limits one client is held to.

The server reads with its own framing rather than `StreamReader.readuntil` so that it can tell
an idle connection (allowed to wait forever) from one that started a line and went quiet (held
to `daemon.line_timeout`), and so that a client never makes it hold more than one line.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass

from daemon.config import Section
from daemon.protocol import MAX_LINE

MIB = 1024 * 1024
READ_CHUNK = 64 * 1024
"""Bytes asked of the socket per read; also the server's StreamReader limit, so the transport
stops reading from a client once about two chunks wait in its buffer."""


@dataclass(frozen=True)
class ConnectionLimits:
    """What one client may hold of the daemon; the defaults are those of config/default.toml."""

    max_connections: int = 256
    max_connections_per_user: int = 64
    max_batch_requests: int = 128
    line_timeout: float = 30.0
    write_timeout: float = 30.0
    max_unread_bytes: int = 16 * MIB
    max_in_flight_per_user: int = 128
    admin_reserve_connections: int = 8
    idle_timeout: float = 300.0

    @classmethod
    def from_config(cls, daemon: Section) -> ConnectionLimits:
        return cls(max_connections=daemon.max_connections,
                   max_connections_per_user=daemon.max_connections_per_user,
                   max_batch_requests=daemon.max_batch_requests,
                   line_timeout=daemon.line_timeout,
                   write_timeout=daemon.write_timeout,
                   max_unread_bytes=daemon.max_unread_mb * MIB,
                   max_in_flight_per_user=daemon.max_in_flight_per_user,
                   admin_reserve_connections=daemon.admin_reserve_connections,
                   idle_timeout=daemon.idle_timeout)


class InFlight:
    """Requests of one connection being answered: at most `count` of them and `size` bytes of
    their lines (one is always let through), so that one client cannot pile up work or memory.
    The connection's reader waits here, and stops reading, until answers free room."""

    def __init__(self, count: int, size: int) -> None:
        self.count = count
        self.size = size
        self.requests = 0
        self.bytes = 0
        self._freed = asyncio.Event()

    async def acquire(self, size: int) -> None:
        while self.requests >= self.count or (self.requests and self.bytes + size > self.size):
            self._freed.clear()
            await self._freed.wait()
        self.requests += 1
        self.bytes += size

    def release(self, size: int) -> None:
        self.requests -= 1
        self.bytes -= size
        self._freed.set()


class LineTooLong(Exception):
    """A line grew past MAX_LINE bytes without its newline."""


class LineTimeout(Exception):
    """A started line was not finished within the line timeout."""


class LineReader:
    """Lines of at most `max_line` bytes (newline excluded) from a stream.

    Between lines a client may stay silent as long as it likes. Once a line has started, the
    time spent waiting for its rest counts against `line_timeout`; time the server spends
    elsewhere (busy, or waiting for a free request slot) does not.
    """

    def __init__(self, reader: asyncio.StreamReader, line_timeout: float, max_line: int = MAX_LINE) -> None:
        self._reader = reader
        self._line_timeout = line_timeout
        self._max_line = max_line
        self._buffer = bytearray()
        self._scanned = 0
        self._waited = 0.0

    async def readline(self) -> bytes | None:
        """The next line with its newline; None at the end of the stream (a partial line is dropped).
        Raises LineTooLong, LineTimeout, or ConnectionError."""
        while True:
            end = self._buffer.find(b"\n", self._scanned)
            if end > self._max_line or (end < 0 and len(self._buffer) > self._max_line):
                raise LineTooLong
            if end >= 0:
                line = bytes(self._buffer[:end + 1])
                del self._buffer[:end + 1]
                self._scanned = 0
                self._waited = 0.0
                return line
            self._scanned = len(self._buffer)
            chunk = await self._read_more()
            if not chunk:
                return None
            self._buffer += chunk

    async def _read_more(self) -> bytes:
        if not self._buffer:
            return await self._reader.read(READ_CHUNK)
        remaining = self._line_timeout - self._waited
        if remaining <= 0:
            raise LineTimeout
        started = time.monotonic()
        try:
            return await asyncio.wait_for(self._reader.read(READ_CHUNK), remaining)
        except TimeoutError:
            raise LineTimeout from None
        finally:
            self._waited += time.monotonic() - started

    async def discard_rest(self, budget: int = 64 * MAX_LINE, timeout: float = 5.0) -> None:
        """Read past the rest of an overlong line (bounded in bytes and time), so that its sender
        can read the error instead of meeting a reset connection."""
        async def drain() -> None:
            seen = 0
            while seen < budget:
                chunk = await self._reader.read(READ_CHUNK)
                if not chunk or b"\n" in chunk:
                    return
                seen += len(chunk)

        ended = b"\n" in self._buffer
        self._buffer.clear()
        if ended:
            return
        try:
            await asyncio.wait_for(drain(), timeout)
        except (TimeoutError, ConnectionError):
            pass
