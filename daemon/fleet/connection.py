"""The fleet database's connection pool: opened, migrated, and its faults told as FleetUnavailable.

A pool (asyncpg) replaces a connection the server closed at the next acquire, so after a
PostgreSQL restart or failover the next call simply connects again (the pool keeps no floor of
idle connections: asyncpg would restore one in the background, logging a traceback each second of
an outage; the heartbeat's calls keep a connection warm anyway); the call that met the
broken connection fails with FleetUnavailable (nothing of it was acknowledged), and callers
marked `retry` (reads, idempotent writes) are tried once more on a fresh connection.
"""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import Awaitable, Callable
from typing import TypeAlias, TypeVar

import asyncpg
from asyncpg.pool import PoolConnectionProxy

from daemon.fleet.errors import FleetUnavailable
from daemon.fleet.migrations import migrate

log = logging.getLogger("sai.fleet")

T = TypeVar("T")
Conn: TypeAlias = "asyncpg.Connection[asyncpg.Record] | PoolConnectionProxy[asyncpg.Record]"
"""A connection of the pool (what `Database.run` hands its work) or one of its own."""
Work = Callable[[Conn], Awaitable[T]]

CONNECTION_FAULTS: tuple[type[BaseException], ...] = (
    OSError, asyncio.TimeoutError, asyncpg.PostgresConnectionError, asyncpg.exceptions.OperatorInterventionError,
    asyncpg.InterfaceError, asyncpg.InternalClientError,
)
"""What a lost, refused or restarting server raises (the statement's own errors are not among them).
InternalClientError: a connection the server dropped while shutting down can be handed out before
asyncpg has seen it close, its protocol still waiting for the end of the server's error ("cannot
switch to state 12; another operation (2) is in progress"); it once stopped a box's dispatcher."""
CLOSE_FAULTS: tuple[type[BaseException], ...] = (TimeoutError, *CONNECTION_FAULTS)


def redact(url: str) -> str:
    """The URL without its password, fit for logs and error messages."""
    return re.sub(r"(://[^:/@?]*):[^@/?]*@", r"\1:***@", url)


class Database:
    def __init__(self, pool: asyncpg.Pool[asyncpg.Record], url: str) -> None:
        self.pool: asyncpg.Pool[asyncpg.Record] = pool
        self.url = url
        self.where = redact(url)

    @classmethod
    async def open(cls, url: str, *, max_size: int = 8, connect_timeout: float = 10.0) -> Database:
        """Connect and migrate; FleetUnavailable when the server cannot be reached, SchemaTooNew
        when a newer daemon migrated it."""
        pool: asyncpg.Pool[asyncpg.Record] | None = None
        try:
            pool = await asyncpg.create_pool(url, min_size=0, max_size=max_size, timeout=connect_timeout,
                                             command_timeout=60)
            async with pool.acquire():
                pass
        except CONNECTION_FAULTS as exc:
            if pool is not None:
                pool.terminate()
            raise FleetUnavailable(f"cannot reach the fleet database {redact(url)}: {exc or type(exc).__name__}") \
                from exc
        except (ValueError, asyncpg.PostgresError) as exc:  # a malformed URL, a missing database or role
            if pool is not None:
                pool.terminate()
            raise FleetUnavailable(f"the fleet database {redact(url)} refused this daemon: {exc}") from exc
        database = cls(pool, url)
        try:
            await database.run(migrate)
        except BaseException:
            await pool.close()
            raise
        return database

    async def close(self) -> None:
        try:
            await asyncio.wait_for(self.pool.close(), 10)
        except CLOSE_FAULTS:
            self.pool.terminate()

    async def run(self, work: Work[T], *, retry: bool = False) -> T:
        """`work(connection)` on a pooled connection; a connection fault becomes FleetUnavailable
        (after one more try on a fresh connection when `retry`: only for work safe to repeat)."""
        tries = 2 if retry else 1
        for left in range(tries - 1, -1, -1):
            try:
                async with self.pool.acquire() as conn:
                    try:
                        return await work(conn)
                    except asyncpg.InternalClientError:
                        conn.terminate()  # left mid-operation: the pool must not hand it out again
                        raise
            except CONNECTION_FAULTS as exc:
                if left:
                    log.debug("fleet database: %s; trying again on a new connection", exc or type(exc).__name__)
                    continue
                raise FleetUnavailable(f"the fleet database {self.where} is unreachable: "
                                       f"{exc or type(exc).__name__}") from exc
        raise AssertionError("unreachable")
