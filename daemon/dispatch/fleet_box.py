"""The box of a fleet member: its lanes claim batches from the fleet's queue in PostgreSQL.

Chosen at assembly instead of Box when `[fleet] database` is set. Each idle lane claims the most
urgent batch it can run (daemon.fleet.jobs.FleetQueue.claim_batch: priority, aging and the
models this lane can load, evaluated in the claim query; its held models first) and runs it as
on a single box. Leases of every job this box holds are renewed each heartbeat, and the renewal
brings the cancels other boxes asked for them; the outcome is written fenced by the claim's
attempt (daemon.fleet.manager). An idle box waits on the fleet's NOTIFY wake-up, with a poll each
heartbeat as the fallback.

A lane claims only when idle, not the batch behind its running one: a claimed job holds a lease,
and one waiting in a busy box's worker would keep it from an idle box.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

from daemon.dispatch.box import Box
from daemon.dispatch.lane import Lane, WorkerEvents
from daemon.fleet.errors import FleetUnavailable
from daemon.fleet.jobs import FleetQueue
from daemon.fleet.manager import FleetManager
from daemon.fleet.wakeup import Wakeup

log = logging.getLogger("sai.dispatch")


class FleetBox(Box):
    def __init__(self, manager: FleetManager, lanes: list[Lane], *, worker_events: WorkerEvents, fleet: FleetQueue,
                 wakeup: Wakeup, max_images: int, heartbeat_seconds: float) -> None:
        super().__init__(manager, lanes, worker_events=worker_events)
        self.fleet_manager = manager
        self.fleet = fleet
        self.wakeup = wakeup
        self.max_images = max_images
        self.heartbeat_seconds = heartbeat_seconds
        self._faulty = False
        self._asked: set[str] = set()
        """Jobs held here whose cancel, asked on another box, was passed to their lane."""

    async def run(self) -> None:
        relay = asyncio.create_task(self._relay_wakeups(), name="sai-fleet-relay")
        renewing = asyncio.create_task(self._renew_leases(), name="sai-fleet-renew")
        work = self.manager.work
        try:
            while not self.stopping:
                for lane in self.lanes:
                    lane.maintain(True)
                if not self.manager.paused:
                    await self._claim()
                await self._recount()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(work.wait(), self.heartbeat_seconds)
                work.clear()
        finally:
            for task in (relay, renewing):
                task.cancel()
            await asyncio.gather(relay, renewing, return_exceptions=True)

    async def _relay_wakeups(self) -> None:
        while True:
            if await self.wakeup.wait(3600):
                self.manager.work.set()

    async def _claim(self) -> None:
        """Each idle lane claims one batch; stops at the first lane that finds nothing."""
        for lane in self.lanes:
            if self.stopping or self.manager.paused or lane.inflight or lane.free_slots() == 0:
                continue
            models = [name for name in lane.models.names()
                      if lane.models.misfit(name, lane.worker.capacity(), lane.residency, lane.device) is None]
            try:
                claimed = await self.fleet.claim_batch(lane.name, self.max_images, models=models,
                                                       held=list(lane.residency.order), device=lane.worker.device)
            except FleetUnavailable as exc:
                if not self._faulty:
                    log.error("fleet: cannot claim work: %s", exc)
                self._faulty = True
                return
            self._faulty = False
            if not claimed:
                return
            batch = self.fleet_manager.adopt(claimed)
            unfit = [job for job in batch if lane.misfit(job)]
            if unfit:  # its size fits no device here: another box may take it
                for job in unfit:
                    log.warning("job %s does not fit worker %s: %s", job.job_id, lane.name, lane.misfit(job))
                await self.fleet_manager.requeue(unfit, f"does not fit worker {lane.name} on box {self.fleet.box}")
                batch = [job for job in batch if job not in unfit]
            if batch:
                lane.launch(batch)

    async def _recount(self) -> None:
        """The fleet's queued count (daemon.status) after each pass: claims here, and submits on any
        box (their NOTIFY wakes this loop), paused or busy alike."""
        with contextlib.suppress(FleetUnavailable):  # told by the claim and the heartbeat
            await self.fleet_manager.recount()

    async def _renew_leases(self) -> None:
        """Each heartbeat, extend the lease of every job this box holds, reading the cancels asked of
        them (at once when one is notified); a job whose lease was lost is logged here, and its finish
        will be refused (and alerted) by fencing."""
        unrenewed = False
        asked = self.wakeup.cancel_asked
        while True:
            with contextlib.suppress(TimeoutError):  # a cancel asked of a job here: read it now
                await asyncio.wait_for(asked.wait(), self.heartbeat_seconds)
            asked.clear()
            held = self.fleet_manager.leases()
            if not held:
                continue
            try:
                lost, cancels = await self.fleet.renew_held(held)
            except FleetUnavailable as exc:
                if not unrenewed:
                    log.warning("fleet: leases not renewed: %s; trying each heartbeat", exc)
                unrenewed = True
                continue
            if unrenewed:
                log.info("fleet: leases renewed again")
            unrenewed = False
            for job_id in lost:
                log.warning("fleet: the lease of job %s was lost (another box may run it now)", job_id)
            await self._cancel_asked(cancels)

    async def _cancel_asked(self, cancels: dict[str, str]) -> None:
        """Cancels asked on other boxes (job id -> who asked) for jobs this box runs: each as a local
        job.cancel of a job held here does, once (the request is read again at every renewal)."""
        self._asked &= set(self.fleet_manager.held)
        for job_id, by in cancels.items():
            job = self.fleet_manager.active.get(job_id)
            if job is None or job_id in self._asked:
                continue
            self._asked.add(job_id)
            log.info("fleet: job %s cancelled by %s", job_id, by)
            await self.cancel_running(job, by)

    async def _fail_unrunnable(self) -> None:
        """Not on a fleet member: a job that fits no device here may fit another box."""
