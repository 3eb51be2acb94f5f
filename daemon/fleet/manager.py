"""The queue manager of a fleet member: the same operations, with the jobs in PostgreSQL.

Chosen at assembly instead of QueueManager when `[fleet] database` is set. Admission, audit and
events are the single box's (inherited); what differs is where a job lives. A submit is
committed to the fleet's queue (any box may run it) before the reply; reads go to the fleet;
this box holds in memory only the jobs its own workers claimed (`active`), each under the
attempt it claimed (`held`), and every write it makes for them is fenced by that attempt. A
write refused as stale means another box owns the job now: the late result is dropped, audited,
and a critical alert names the job and that box.
"""

from __future__ import annotations

import asyncio
import builtins
import logging
import time
from collections.abc import Awaitable, Callable
from functools import partial
from typing import Any

from daemon.auth import Peer
from daemon.fleet.errors import FleetUnavailable, StaleAttempt
from daemon.fleet.jobs import FleetJob, FleetQueue
from daemon.protocol import CONFLICT, NOT_FOUND, UNAVAILABLE, RpcError, echo
from daemon.queue.jobs import CANCELLED, FAILED, FINISHED, QUEUED, RUNNING, SUCCEEDED, Job
from daemon.queue.manager import Jobs, QueueManager

log = logging.getLogger("sai.fleet")

FleetJobs = list[FleetJob]
Leases = list[tuple[str, int]]
"""(`FleetManager.list` hides the builtin inside the class body.)"""
StaleHook = Callable[[StaleAttempt, str], None]
"""Told of a refused (stale) write for one of this box's jobs, and what the write was."""


OUTAGE_RETRY_FIRST, OUTAGE_RETRY_MAX = 0.25, 2.0
"""Seconds between tries of a job's outcome while the fleet database does not answer."""


def unavailable(exc: FleetUnavailable) -> RpcError:
    return RpcError(UNAVAILABLE, f"{exc}; nothing was changed, try again once the fleet database answers",
                    {"reason": "fleet_database"})


class FleetManager(QueueManager):
    def __init__(self, *args: Any, fleet: FleetQueue, on_stale: StaleHook, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.fleet = fleet
        self.on_stale = on_stale
        self.held: dict[str, int] = {}
        """job id -> the attempt (fencing token) this box claimed it under."""
        self.fleet_queued = 0
        """Queued jobs of the whole fleet, as last counted (daemon.status's `queued`)."""

    @property
    def box(self) -> str:
        return self.fleet.box

    def owns(self, peer: Peer, job: Job) -> bool:
        """A user is one person fleet-wide by login name: a job submitted through any box is theirs
        on every box, whatever uid they have on each machine (the boxes share one user directory)."""
        return peer.user == job.user

    async def recover(self) -> Jobs:
        """Jobs the fleet still has running on this box were held by its previous run, which died:
        back to the queue at once (under a new attempt) rather than after their lease."""
        self.paused = (await self.store.get_setting("paused")) == "1" or self.config.queue.start_paused
        orphans = await self.fleet.held_by_box()
        for held in orphans:
            try:
                await self.fleet.requeue(held.job_id, held.attempt, error=f"box {self.box} restarted while it ran")
            except StaleAttempt:
                pass  # reaped meanwhile
        if orphans:
            log.warning("fleet: %d job(s) this box was running when it stopped went back to the queue",
                        len(orphans))
        self.work.set()
        return []  # nothing of this box's own store to clean up

    # -- reading -------------------------------------------------------------------------------

    async def _fleet_job(self, job_id: str) -> FleetJob | None:
        try:
            return await self.fleet.get(job_id)
        except FleetUnavailable as exc:
            raise unavailable(exc) from None

    async def get(self, job_id: str) -> Job:
        job = self.active.get(job_id)
        if job is not None:
            return job
        held = await self._fleet_job(job_id)
        if held is None:
            raise RpcError(NOT_FOUND, f"no job {echo(job_id)}", {"job_id": echo(job_id)})
        return held.job

    def position(self, job: Job) -> int | None:
        """Only the jobs handed to this box's workers have a known place; the fleet's queue order
        depends on which box claims next."""
        if job.state == QUEUED and job.handed:
            return 1 + list(self._handed).index(job)
        return None

    async def page(self, state: str | None, limit: int, offset: int) -> tuple[Jobs, int]:
        """The fleet's jobs: running and queued (submission order), then finished (newest first)."""
        try:
            counts = await self.fleet.counts()
            unfinished = sum(n for s, n in counts.items() if s in (QUEUED, RUNNING) and state in (None, s))
            live: Jobs = []
            if offset < unfinished:
                live = [held.job for held in await self.fleet.unfinished(state, limit, offset)]
            finished: Jobs = []
            if state in (None, *FINISHED) and offset + limit > unfinished:
                skip = max(0, offset - unfinished)
                finished = [held.job for held in await self.fleet.finished_page(state, limit - len(live), skip)]
        except FleetUnavailable as exc:
            raise unavailable(exc) from None
        local = {job.job_id: job for job in self.active.values()}  # this box's fresher copies (progress)
        jobs = [local.get(job.job_id, job) for job in live] + finished
        total = sum(n for s, n in counts.items() if state in (None, s))
        return jobs[:limit], total

    async def list(self, state: str | None, limit: int) -> Jobs:
        return (await self.page(state, limit, 0))[0]

    async def ids_starting(self, prefix: str, limit: int) -> builtins.list[str]:
        try:
            return await self.fleet.ids_starting(prefix, limit)
        except FleetUnavailable as exc:
            raise unavailable(exc) from None

    async def queued_of(self, peer: Peer) -> int:
        """The user's queued jobs on every box, so that `max_queued_per_user` holds fleet-wide. Two
        boxes' submits at the same moment may each miss the other's and pass the cap by one; this
        box's own submits still being committed count as on a single box (`_submitting`), one that
        commits while this count runs twice (refused one early at the cap: docs/fleet.md)."""
        try:
            return await self.fleet.queued_of(peer.user)
        except FleetUnavailable as exc:
            raise unavailable(exc) from None

    def oldest_wait(self) -> float | None:
        return None

    async def recount(self) -> None:
        """Count the fleet's queued jobs again (daemon.status's `queued`); raises FleetUnavailable."""
        self.fleet_queued = (await self.fleet.counts()).get("queued", 0)

    def status(self) -> dict[str, Any]:
        handed = len(self._handed)
        return {"paused": self.paused, "queued": self.fleet_queued, "next": handed,
                "running": len(self.active) - handed}

    # -- changing ------------------------------------------------------------------------------

    async def submit(self, peer: Peer, client_token: str | None, **params: Any) -> dict[str, Any]:
        """Queue a job in the fleet; a `client_token` retried on any box returns the first job."""
        if client_token is not None:
            try:
                existing = await self.fleet.by_token(peer.user, client_token)
            except FleetUnavailable as exc:
                raise unavailable(exc) from None
            if existing is not None:
                return self._submit_reply(existing.job, duplicate=True)
        return self._submit_reply(await self._submit_new(peer, client_token, params))

    async def _enqueue(self, job: Job) -> Job:
        try:
            held, _ = await self.fleet.submit(job)
        except FleetUnavailable as exc:
            raise unavailable(exc) from None
        self.fleet_queued += 1
        return held.job

    async def cancel(self, peer: Peer, job_id: str, on_running: Callable[[Job], Any]) -> dict[str, Any]:
        job = await self.get(job_id)
        self.check_owner(peer, job, "cancel")
        if job.state in FINISHED:
            raise RpcError(CONFLICT, f"job {job_id} already {job.state}; nothing to cancel", {"state": job.state})
        if job_id in self.active:  # this box's workers hold it: as on a single box
            await self.audit(peer, "job.cancel", job_id, {"state": job.state})
            await on_running(job)
            return {"job_id": job_id, "state": "cancelling"}
        if job.state == RUNNING:
            return await self._cancel_elsewhere(peer, job_id)
        try:
            done = await self.fleet.cancel_queued(job_id, f"cancelled by {peer.user}")
        except FleetUnavailable as exc:
            raise unavailable(exc) from None
        if not done:
            raise RpcError(CONFLICT, f"job {job_id} was claimed by a box meanwhile; cancel it again",
                           {"state": RUNNING})
        await self.audit(peer, "job.cancel", job_id, {"state": QUEUED})
        job.state, job.error = CANCELLED, f"cancelled by {peer.user}"
        self._publish_state(job)
        return {"job_id": job_id, "state": CANCELLED}

    async def _cancel_elsewhere(self, peer: Peer, job_id: str) -> dict[str, Any]:
        """Ask the box running the job to cancel it. That box reads the request when it next renews
        its leases (daemon.dispatch.fleet_box) and cancels the job as a local job.cancel does; the
        request names the attempt running now, so a later run of the job (reaped and claimed again)
        is not stopped by it."""
        try:
            held = await self.fleet.get(job_id)
            asked = (held is not None and held.job.state == RUNNING
                     and await self.fleet.request_cancel(job_id, held.attempt, f"{peer.user} on box {self.box}"))
        except FleetUnavailable as exc:
            raise unavailable(exc) from None
        if held is None or not asked:
            state = held.job.state if held is not None else None
            raise RpcError(CONFLICT, f"job {job_id} changed meanwhile (now {state}); cancel it again",
                           {"state": state})
        await self.audit(peer, "job.cancel", job_id, {"state": RUNNING, "box": held.box, "attempt": held.attempt})
        return {"job_id": job_id, "state": "cancelling"}

    async def set_priority(self, peer: Peer, job_id: str, priority: int) -> dict[str, Any]:
        job = await self.get(job_id)
        self.check_owner(peer, job, "reprioritising")
        try:
            changed = job.state == QUEUED and not job.handed and await self.fleet.set_priority(job_id, priority)
        except FleetUnavailable as exc:
            raise unavailable(exc) from None
        if not changed:
            raise RpcError(CONFLICT, f"job {job_id} is no longer queued; only a queued job's priority can change",
                           {"state": job.state})
        old = job.priority_name
        job.priority = priority
        await self.audit(peer, "job.priority", job_id, {"from": old, "to": job.priority_name})
        self._publish_state(job)
        return {"job_id": job_id, "priority": job.priority_name, "position": None}

    # -- the dispatcher's side -----------------------------------------------------------------

    def adopt(self, claimed: FleetJobs) -> Jobs:
        """Jobs a worker of this box claimed: held here under their attempts, queued (handed to the
        worker) until it begins them, as on a single box."""
        jobs = []
        for held in claimed:
            job = held.job
            job.state, job.started_at, job.progress = QUEUED, None, 0.0
            self.active[job.job_id] = job
            self.held[job.job_id] = held.attempt
            jobs.append(job)
        return jobs

    def begin(self, jobs: Jobs) -> Jobs:
        """As on a single box, but the attempt was counted by the claim."""
        now = time.time()
        live = [job for job in jobs if job.handed]
        for job in live:
            self._handed.pop(job, None)
            job.handed, job.state, job.started_at = False, RUNNING, now
        return live

    async def record_start(self, jobs: Jobs) -> None:
        for job in jobs:
            await self.audit(None, "job.start", job.job_id, {"attempt": job.attempts, "box": self.box,
                                                            "fencing_attempt": self.held.get(job.job_id),
                                                            "batch": [j.job_id for j in jobs]})
            self._publish_state(job)

    def _stale(self, exc: StaleAttempt, what: str) -> None:
        log.critical("fleet: %s: %s", what, exc)
        self.on_stale(exc, what)

    def _release(self, job: Job) -> int | None:
        self.active.pop(job.job_id, None)
        self._handed.pop(job, None)
        job.handed = False
        return self.held.pop(job.job_id, None)

    async def _through_outage(self, write: Callable[[], Awaitable[FleetJob]], what: str) -> FleetJob:
        """A fenced write for a job held here, tried again while the fleet database does not answer
        (a restart, a failover) for as long as the job's lease could still hold: a result made during
        an outage is recorded when the database is back instead of the job running again elsewhere.
        Safe to repeat: fencing refuses it once another box owns the job. Raises the last
        FleetUnavailable after `lease_seconds`."""
        deadline = time.monotonic() + self.fleet.lease_seconds
        delay = OUTAGE_RETRY_FIRST
        while True:
            try:
                written = await write()
            except FleetUnavailable as exc:
                if time.monotonic() + delay > deadline:
                    raise
                if delay == OUTAGE_RETRY_FIRST:
                    log.warning("fleet: %s waits for the fleet database (%s); trying again for up to %.0f s",
                                what, exc, self.fleet.lease_seconds)
            else:
                if delay > OUTAGE_RETRY_FIRST:
                    log.info("fleet: %s is recorded, the fleet database answers again", what)
                return written
            await asyncio.sleep(delay)
            delay = min(delay * 2, OUTAGE_RETRY_MAX)

    async def finish(self, jobs: Jobs, state: str, error: str | None = None) -> None:
        """Record each job's outcome in the fleet, fenced by its attempt; a stale one is not recorded."""
        for job in jobs:
            attempt = self._release(job)
            if attempt is None:
                continue
            try:
                held = await self._through_outage(
                    partial(self.fleet.finish, job.job_id, attempt, state, outputs=job.outputs, error=error,
                            model_family=job.model_family, weights_sha256=job.weights_sha256),
                    f"the {state} result of job {job.job_id}")
            except StaleAttempt as exc:
                if (exc.current, exc.state, exc.box) == (attempt, state, self.box):
                    # a try the outage cut off after its commit: recorded already, not stale
                    log.info("fleet: job %s: the %s result was recorded by a try the outage cut off", job.job_id, state)
                    await self._finished(job, state, time.time(), error, 1.0 if state == SUCCEEDED else job.progress)
                    continue
                await self.audit(None, "job.stale", job.job_id, {"write": f"finish {state}", "attempt": attempt,
                                                                  "current": exc.current, "box": exc.box})
                self._stale(exc, f"this box's {state} result for job {job.job_id} (attempt {attempt}) is dropped")
                continue
            except FleetUnavailable as exc:
                log.error("fleet: job %s %s here, but the fleet database did not record it within its lease (%s); "
                          "another box runs it again", job.job_id, state, exc)
                continue
            await self._finished(job, held.job.state, held.job.finished_at, held.job.error, held.job.progress)
        self.work.set()

    async def _finished(self, job: Job, state: str, finished_at: float | None, error: str | None,
                        progress: float) -> None:
        await self.audit(None, "job.finish", job.job_id, {"state": state, "error": error,
                                                         "outputs": len(job.outputs), "box": self.box})
        job.state, job.finished_at, job.error, job.progress = state, finished_at, error, progress
        self._publish_state(job)

    async def requeue(self, jobs: Jobs, reason: str, count_attempt: bool = True) -> Jobs:
        """Give the jobs back to the fleet (each under a new attempt); those past `max_attempts` fail."""
        failed = []
        for job in jobs:
            attempt = self._release(job)
            if attempt is None:
                continue
            try:
                held = await self._through_outage(partial(self.fleet.requeue, job.job_id, attempt, error=reason),
                                                  f"job {job.job_id} going back to the queue")
            except StaleAttempt as exc:
                self._stale(exc, f"putting job {job.job_id} (attempt {attempt}) back in the queue")
                continue
            except FleetUnavailable as exc:
                log.error("fleet: job %s could not go back to the queue (%s); its lease will expire", job.job_id, exc)
                continue
            job.state, job.error = held.job.state, held.job.error
            if held.job.state == FAILED:
                failed.append(job)
            self._publish_state(job)
        self.work.set()
        return failed

    def leases(self) -> Leases:
        """(job id, attempt) of every job this box holds, for renewal."""
        return list(self.held.items())
