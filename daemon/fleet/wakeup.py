"""LISTEN for submits: idle workers wait on an event that a NOTIFY sets, instead of polling; and
for cancels other boxes ask of this box's jobs, so that they are read at once, not at the next renewal.

One dedicated connection (LISTEN cannot share a pooled one). When it is lost (the server restarted,
a failover), it is opened again in the background and the event is set once, so waiters look at
the queue: a submit made while nobody was listening is then found by the claim itself.
"""

from __future__ import annotations

import asyncio
import logging
import time

import asyncpg

from daemon.fleet.connection import CLOSE_FAULTS, CONNECTION_FAULTS, redact
from daemon.fleet.jobs import CANCEL_CHANNEL, NOTIFY_CHANNEL

log = logging.getLogger("sai.fleet")


class Wakeup:
    def __init__(self, url: str, *, box: str = "", retry_seconds: float = 1.0) -> None:
        self.url = url
        self.box = box
        self.retry_seconds = retry_seconds
        self._event = asyncio.Event()
        self.cancel_asked = asyncio.Event()
        """Set when another box asks to cancel a job `box` runs (CANCEL_CHANNEL): renew leases now."""
        self._conn: asyncpg.Connection | None = None
        self._task: asyncio.Task[None] | None = None
        self._lost = asyncio.Event()
        self.notified_at: float | None = None
        """time.perf_counter() of the latest notification (for latency measurements)."""

    @property
    def listening(self) -> bool:
        return self._conn is not None and not self._conn.is_closed()

    async def start(self) -> None:
        """Listen now (the caller hears at once when it cannot), and keep listening after faults."""
        await self._listen()
        self._task = asyncio.create_task(self._keep_listening(), name="sai-fleet-wakeup")

    async def _listen(self) -> None:
        conn = await asyncpg.connect(self.url, timeout=10)
        await conn.add_listener(NOTIFY_CHANNEL, self._notified)
        await conn.add_listener(CANCEL_CHANNEL, self._cancel_notified)
        conn.add_termination_listener(lambda _conn: self._lost.set())
        self._conn = conn

    def _notified(self, _conn: object, _pid: int, _channel: str, _payload: object) -> None:
        self.notified_at = time.perf_counter()
        self._event.set()

    def _cancel_notified(self, _conn: object, _pid: int, _channel: str, payload: object) -> None:
        if payload == self.box:
            self.cancel_asked.set()

    async def _keep_listening(self) -> None:
        while True:
            await self._lost.wait()
            self._lost.clear()
            self._conn = None
            log.warning("fleet database: the LISTEN connection was lost; connecting again")
            while True:
                try:
                    await self._listen()
                    break
                except CONNECTION_FAULTS as exc:
                    log.info("fleet database %s not reachable yet: %s", redact(self.url), exc or type(exc).__name__)
                    await asyncio.sleep(self.retry_seconds)
            self._event.set()  # anything submitted while deaf is in the queue: look

    async def wait(self, timeout: float) -> bool:
        """Until a submit is notified (True) or `timeout` seconds pass (False); clears the event."""
        try:
            await asyncio.wait_for(self._event.wait(), timeout)
        except TimeoutError:
            return False
        finally:
            self._event.clear()
        return True

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
        if self._conn is not None and not self._conn.is_closed():
            try:
                await asyncio.wait_for(self._conn.close(), 5)
            except CLOSE_FAULTS:
                self._conn.terminate()
