"""This daemon as a member of the fleet: it joins, heartbeats, reaps, and leaves.

Each heartbeat (`[fleet] heartbeat_seconds`) writes the box's row (models, devices, free workers,
how to reach it) and runs one pass of the reaper, so jobs of a box that died go back to the queue
within a lease and a heartbeat, whichever box notices first. While the database cannot be reached
the `fleet.unreachable` alarm is up (a critical alert), and cleared at the next heartbeat that lands.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any

from daemon.fleet.boxes import BoxInfo, BoxRegistry
from daemon.fleet.connection import Database
from daemon.fleet.errors import FleetUnavailable
from daemon.fleet.jobs import FleetQueue, Reaped
from daemon.queue.store import TextSealer

log = logging.getLogger("sai.fleet")

Fault = Callable[[str | None], None]
"""Told why the fleet database cannot be reached (a message), or None once it can again."""


class FleetMember:
    def __init__(self, db: Database, queue: FleetQueue, registry: BoxRegistry, describe: Callable[[], BoxInfo], *,
                 heartbeat_seconds: float, on_fault: Fault, on_reaped: Callable[[list[Reaped]], None]) -> None:
        self.db = db
        self.queue = queue
        self.registry = registry
        self.describe = describe
        self.heartbeat_seconds = heartbeat_seconds
        self.on_fault = on_fault
        self.on_reaped = on_reaped
        self.beats = 0
        self.owns_db = False
        """Whether `leave` closes the database (join opened it)."""
        self._faulty = False

    @property
    def box(self) -> str:
        return self.queue.box

    @classmethod
    async def join(cls, url: str, sealer: TextSealer, describe: Callable[[], BoxInfo], *, lease_seconds: float,
                   heartbeat_seconds: float, max_attempts: int, aging_seconds: float, on_fault: Fault,
                   on_reaped: Callable[[list[Reaped]], None] | None = None) -> FleetMember:
        """Connect, migrate and register this box; FleetUnavailable or SchemaTooNew stop the start."""
        db = await Database.open(url)
        queue = FleetQueue(db, sealer, box=describe().name, lease_seconds=lease_seconds, max_attempts=max_attempts,
                           aging_seconds=aging_seconds)
        try:
            member = await cls.enter(queue, describe, heartbeat_seconds=heartbeat_seconds, on_fault=on_fault,
                                     on_reaped=on_reaped)
        except BaseException:
            await db.close()
            raise
        member.owns_db = True
        return member

    @classmethod
    async def enter(cls, queue: FleetQueue, describe: Callable[[], BoxInfo], *, heartbeat_seconds: float,
                    on_fault: Fault, on_reaped: Callable[[list[Reaped]], None] | None = None) -> FleetMember:
        """Register this box on the database `queue` uses (which the caller opened and closes)."""
        registry = BoxRegistry(queue.db)
        await registry.register(describe())
        log.info("fleet: box %r joined %s", queue.box, queue.db.where)
        return cls(queue.db, queue, registry, describe, heartbeat_seconds=heartbeat_seconds, on_fault=on_fault,
                   on_reaped=on_reaped or _log_reaped)

    async def beat(self) -> None:
        """One heartbeat and one reaper pass; a database fault raises the alarm instead of ending."""
        try:
            await self.registry.heartbeat(self.describe())
            reaped = await self.queue.reap()
        except FleetUnavailable as exc:
            if not self._faulty:
                log.error("fleet: %s", exc)
            self._faulty = True
            self.on_fault(str(exc))
            return
        if self._faulty:
            log.info("fleet: the database answers again")
            self._faulty = False
            self.on_fault(None)
        self.beats += 1
        if reaped:
            self.on_reaped(reaped)

    async def run(self) -> None:
        """Heartbeat until cancelled."""
        while True:
            await asyncio.sleep(self.heartbeat_seconds)
            await self.beat()

    async def status(self) -> dict[str, Any]:
        """`fleet.status`: every box (heartbeat age, load, models) and the fleet's queue."""
        return {"configured": True, "box": self.box, "database": self.db.where,
                "lease_seconds": self.queue.lease_seconds, "heartbeat_seconds": self.heartbeat_seconds,
                **await self.registry.status()}

    async def leave(self) -> None:
        """An orderly stop: the box's row goes (its running jobs were put back by the dispatcher)."""
        try:
            await self.registry.leave(self.box)
        except FleetUnavailable as exc:
            log.warning("fleet: could not leave the registry: %s", exc)
        if self.owns_db:
            await self.db.close()


def _log_reaped(reaped: list[Reaped]) -> None:
    for job in reaped:
        log.warning("fleet: job %s's lease on box %r expired; %s (attempt %d)", job.job_id, job.box,
                    "back in the queue" if job.state == "queued" else job.state, job.attempt)
