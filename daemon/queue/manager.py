"""The queue's operations: submit, get, list, cancel, reprioritise, pause and resume.

Queued and running jobs live in memory (and in SQLite); finished ones only in SQLite. Every
change is committed before the caller hears about it, then published on the `job`/`queue` topics.
"""

from __future__ import annotations

import asyncio
import builtins
import logging
import os
import time
from collections.abc import Callable, Coroutine
from typing import Any

from daemon.auth import Peer, Role
from daemon.catalog import DEFAULT_KEYS, ModelCatalog, ModelEntry, family_problems
from daemon.config import Config
from daemon.events import EventBus
from daemon.protocol import CONFLICT, NOT_FOUND, NOT_PERMITTED, UNAVAILABLE, RpcError, echo, invalid_params
from daemon.queue import scheduler
from daemon.queue.admission import Admission
from daemon.queue.jobs import CANCELLED, FAILED, FINISHED, QUEUED, RUNNING, Job, new_job_id
from daemon.queue.store import JobStore
from daemon.queue.tokens import TokenizerCache
from daemon.worker.memory_model import AnyDevice, MemoryModel

log = logging.getLogger("sai.queue")

Auditor = Callable[[Peer | None, str, str, dict[str, Any]], Coroutine[Any, Any, None]]
"""(who asked or None for the daemon, action, subject, details): records one audit entry."""
Jobs = list[Job]
"""(`QueueManager.list` hides the builtin inside the class body.)"""
PromptDigest = Callable[[str, str], dict[str, str]]
"""(prompt, negative_prompt) -> the audit fields that stand for them (keyed digests, never text)."""
PROGRESS_EVERY = 0.1
"""Seconds between a running job's `progress` events: a console needs no more, and a batch of eight
on a fast GPU would otherwise send hundreds a second to every subscriber."""


class QueueManager:
    """The queue calls nothing above it: what it needs comes in at construction, and what happens
    to its jobs goes out as `job`/`queue` events on the bus (the monitor counts finished jobs from
    those events, so there is no finished callback to call up into the service)."""

    def __init__(self, store: JobStore, admission: Admission, bus: EventBus, config: Config, *,
                 audit: Auditor, memory: MemoryModel | AnyDevice, capacity: Callable[[], int | None],
                 models: ModelCatalog, prompt_digest: PromptDigest) -> None:
        """`audit` records submits, refusals, starts, finishes and the other state changes
        (write-ahead); `memory` is the memory model the dispatcher also feeds and sizes batches
        with, and `capacity` the bytes the worker can use: together they refuse at submit a job
        that can never fit; `models` are the configured models a job may name (and their defaults)."""
        self.store = store
        self.prompt_digest = prompt_digest
        self.admission = admission
        self.bus = bus
        self.config = config
        self.policy = scheduler.Policy(config.queue.aging_seconds, config.queue.max_batch)
        self.models = models
        self.tokens = TokenizerCache(models)
        self.active: dict[str, Job] = {}
        self.index = scheduler.QueueIndex()
        self._handed: dict[Job, None] = {}
        """Queued jobs handed to the worker (at most two batches): out of the index, not yet begun."""
        self.paused = False
        self.work = asyncio.Event()
        self._seq = 0
        self._tokens: dict[tuple[int, str], asyncio.Future[str | None]] = {}
        self._submitting: dict[int, int] = {}
        self._progress_sent: dict[str, float] = {}
        """job id -> monotonic time of its latest progress event, while it runs."""
        self.audit = audit
        self.memory = memory
        self.capacity = capacity

    async def recover(self) -> list[Job]:
        """Load unfinished jobs; those that were running go back to the queue (or fail past the limit)."""
        self._seq = await self.store.next_seq()
        self.paused = (await self.store.get_setting("paused")) == "1" or self.config.queue.start_paused
        recovered: list[Job] = []
        for job in await self.store.unfinished():
            if job.state == RUNNING:
                if job.attempts >= self.config.queue.max_attempts:
                    self._finish(job, FAILED, f"interrupted {job.attempts} times while running "
                                              "(daemon or worker died); not retried again")
                else:
                    job.state, job.progress, job.started_at = QUEUED, 0.0, None
                    self._activate(job)
                recovered.append(job)
            else:
                self._activate(job)
        await self.store.save_many(recovered)
        if self.paused:
            await self.store.set_setting("paused", "1")
        self.work.set()
        return recovered

    # -- reading -------------------------------------------------------------------------------

    def _activate(self, job: Job) -> None:
        self.active[job.job_id] = job
        if job.state == QUEUED:
            self.index.add(job)

    def queued(self) -> list[Job]:
        """The jobs a batch can still be made of (not those already handed to the worker)."""
        return list(self.index)

    def handed(self) -> list[Job]:
        """Queued jobs handed to the worker, in the order it will begin them."""
        return list(self._handed)

    def position(self, job: Job) -> int | None:
        """1-based place in the start order; the jobs handed to the worker come first."""
        if job.state != QUEUED:
            return None
        if job.handed:
            return 1 + list(self._handed).index(job)
        return len(self._handed) + self.index.position(job, time.time(), self.policy.aging_seconds)

    def owns(self, peer: Peer, job: Job) -> bool:
        """`peer` submitted `job` (on a single box: the same uid)."""
        return peer.uid == job.uid

    def may_see_prompt(self, peer: Peer, job: Job) -> bool:
        return peer.role >= Role.ADMIN or self.owns(peer, job)

    def view(self, peer: Peer, job: Job, position: int | None = None) -> dict[str, Any]:
        data = job.to_api(self.may_see_prompt(peer, job))
        data["position"] = position if position is not None else self.position(job)
        return data

    async def get(self, job_id: str) -> Job:
        job = self.active.get(job_id) or await self.store.get(job_id)
        if job is None:
            raise RpcError(NOT_FOUND, f"no job {echo(job_id)}", {"job_id": echo(job_id)})
        return job

    async def list(self, state: str | None, limit: int) -> list[Job]:
        now = time.time()
        live = [job for job in self.active.values() if state in (None, job.state)]
        running = [job for job in live if job.state == RUNNING]
        handed = [job for job in self._handed if job in live]
        queued = scheduler.order([job for job in live if job.state == QUEUED and not job.handed], now,
                                 self.policy.aging_seconds)
        jobs = running + handed + queued
        if state is None or state in FINISHED:
            jobs += await self.store.finished(state, max(0, limit - len(jobs)))
        return jobs[:limit]

    async def page(self, state: str | None, limit: int, offset: int) -> tuple[Jobs, int]:
        """`job.list`: a page of the listing and how many jobs match `state` in all. Past the running
        and queued jobs (at most the queue's cap, in memory) a page is read from the store."""
        live = sum(1 for job in self.active.values() if state in (None, job.state))
        if offset < live:
            jobs = (await self.list(state, offset + limit))[offset:]
        else:
            jobs = await self.store.finished(state, limit, offset - live) if state in (None, *FINISHED) else []
        total = live + (await self.store.count_finished(state) if state in (None, *FINISHED) else 0)
        return jobs, total

    async def ids_starting(self, prefix: str, limit: int) -> builtins.list[str]:
        return await self.store.ids_starting(prefix, limit)

    def oldest_wait(self) -> float | None:
        """Seconds the longest-waiting queued job has waited (None: nothing queued)."""
        oldest = self.index.oldest_enqueued()
        return None if oldest is None else max(0.0, time.time() - oldest)

    def status(self) -> dict[str, Any]:
        """Counts by state; `next` of the queued ones are handed to the worker and start next."""
        queued = len(self.index) + len(self._handed)
        return {"paused": self.paused, "queued": queued, "next": len(self._handed),
                "running": len(self.active) - queued}

    # -- changing ------------------------------------------------------------------------------

    def _publish_state(self, job: Job) -> None:
        if not self.bus.wants("job"):
            return
        self.bus.publish("job", {"kind": "state", "job_id": job.job_id, "state": job.state,
                                 "job": job.to_api(show_prompt=False)})

    def _publish_queue(self, kind: str) -> None:
        self.bus.publish("queue", {"kind": kind, **self.status()})

    async def submit(self, peer: Peer, client_token: str | None, **params: Any) -> dict[str, Any]:
        """Queue a job; with a `client_token`, a retry (even a concurrent one) returns the same job."""
        if client_token is None:
            return self._submit_reply(await self._submit_new(peer, None, params))
        key = (peer.uid, client_token)
        while (pending := self._tokens.get(key)) is not None:
            job_id = await asyncio.shield(pending)
            if job_id is not None:
                return self._submit_reply(await self.get(job_id), duplicate=True)
        claim: asyncio.Future[str | None] = asyncio.get_running_loop().create_future()
        self._tokens[key] = claim
        job_id = None
        try:
            existing = await self.store.by_token(peer.uid, client_token)
            if existing is not None:
                job_id = existing.job_id
                return self._submit_reply(existing, duplicate=True)
            job = await self._submit_new(peer, client_token, params)
            job_id = job.job_id
            return self._submit_reply(job)
        finally:
            del self._tokens[key]
            claim.set_result(job_id)

    async def queued_of(self, peer: Peer) -> int:
        """The user's queued jobs, for the queue cap (a fleet member counts the fleet's)."""
        return self.index.count_for(peer.uid)

    async def _submit_new(self, peer: Peer, client_token: str | None, params: dict[str, Any]) -> Job:
        # Submits still being committed count against the user's queue cap too, else a burst of
        # concurrent submits would all pass the check before any of them is queued.
        in_flight = self._submitting.get(peer.uid, 0)
        self._submitting[peer.uid] = in_flight + 1
        try:
            self.admission.rate_limit(peer.uid, peer.user, await self.queued_of(peer) + in_flight)
            return await self._admit_and_queue(peer, client_token, params)
        finally:
            if (left := self._submitting[peer.uid] - 1) > 0:
                self._submitting[peer.uid] = left
            else:
                del self._submitting[peer.uid]

    async def _admit_and_queue(self, peer: Peer, client_token: str | None, params: dict[str, Any]) -> Job:
        try:
            asked_guidance = params.get("guidance") is not None
            model = self._model_for(params)
            admitted = self.admission.admit(**params, tokens=await self.tokens.of(model))
            if asked_guidance and model.guidance == "none":
                admitted.warnings.append(f"guidance is ignored: model {model.name} is a distilled Flux without a "
                                         "guidance embedding (like FLUX.1 [schnell])")
            for field, reason in family_problems(model.family_now, {**admitted.params,
                                                                     "negative_prompt": admitted.negative_prompt}):
                raise invalid_params(field, f"{reason} (model {model.name})")
        except RpcError as exc:
            rule = {"rule": exc.data["rule"]} if exc.data and "rule" in exc.data else {}
            await self.audit(peer, "job.refuse", "", {"code": exc.code, "reason": exc.message, **rule})
            raise
        refusal = self.memory.refusal(admitted.params["width"], admitted.params["height"], self.capacity())
        if refusal:
            await self.audit(peer, "job.refuse", "", {"code": UNAVAILABLE, "reason": refusal})
            raise RpcError(UNAVAILABLE, refusal, {"reason": "memory"})
        admitted.params["model"] = model.name
        if admitted.params["seed"] is None:
            admitted.params["seed"] = int.from_bytes(os.urandom(4), "big")
        now = time.time()
        self._seq += 1
        job = Job(job_id=new_job_id(), seq=self._seq, state=QUEUED, priority=admitted.priority,
                  params=admitted.params, prompt=admitted.prompt, negative_prompt=admitted.negative_prompt,
                  user=peer.user, uid=peer.uid, created_at=now, enqueued_at=now, client_token=client_token,
                  risk=admitted.risk, warnings=admitted.warnings, model_id=model.name)
        details = {"priority": job.priority_name, "risk": job.risk, **job.params,
                   **self.prompt_digest(job.prompt, job.negative_prompt)}
        # Write-ahead audit: the entry is durable before the job is. A kill between the two commits
        # leaves an audited submit with no job (the client, unanswered, retries), never a job that
        # the audit log does not know about.
        await self.audit(peer, "job.submit", job.job_id, details)
        job = await self._enqueue(job)
        self._publish_state(job)
        self.work.set()
        return job

    async def _enqueue(self, job: Job) -> Job:
        """Store a new queued job durably and make it claimable; returns the job as stored (a fleet
        returns the first job of its `client_token` when another box's submit of it won a race)."""
        await self.store.insert(job)
        self._activate(job)
        return job

    def _model_for(self, params: dict[str, Any]) -> ModelEntry:
        """The model a submit names (None: the default); its defaults fill the sizes, steps and
        guidance the submit leaves out. -32602 naming `model` when no such model is configured."""
        name = params.pop("model", None)
        model = self.models.get(name)
        if model is None:
            raise invalid_params("model", f"{echo(str(name))!r} is not a configured model; configured: "
                                 f"{', '.join(self.models.names())} (sai models lists them)")
        for key in DEFAULT_KEYS:
            if params.get(key) is None:
                params[key] = model.defaults[key]
        return model

    def _submit_reply(self, job: Job, duplicate: bool = False) -> dict[str, Any]:
        reply = {"job_id": job.job_id, "position": self.position(job), "risk": job.risk,
                 "warnings": job.warnings, "state": job.state}
        if duplicate:
            reply["duplicate"] = True
        return reply

    def check_owner(self, peer: Peer, job: Job, action: str) -> None:
        """Refuse unless `peer` owns `job` or is an admin (-32001, naming the role needed)."""
        if not self.owns(peer, job) and peer.role < Role.ADMIN:
            raise RpcError(NOT_PERMITTED, f"{action} of {job.user}'s job {job.job_id} needs the admin role; "
                           f"{peer.user} is {peer.role.label}", {"needed": "admin", "have": peer.role.label})

    async def cancel(self, peer: Peer, job_id: str, on_running: Callable[[Job], Any]) -> dict[str, Any]:
        job = await self.get(job_id)
        self.check_owner(peer, job, "cancel")
        if job.state in FINISHED:
            raise RpcError(CONFLICT, f"job {job_id} already {job.state}; nothing to cancel", {"state": job.state})
        await self.audit(peer, "job.cancel", job_id, {"state": job.state})
        if job.state == QUEUED:
            if job.handed:
                await on_running(job)  # the worker drops it before it begins
            self._finish(job, CANCELLED, f"cancelled by {peer.user}")
            await self.store.save(job)
            self._publish_state(job)
            return {"job_id": job_id, "state": job.state}
        await on_running(job)
        return {"job_id": job_id, "state": "cancelling"}

    async def set_priority(self, peer: Peer, job_id: str, priority: int) -> dict[str, Any]:
        job = await self.get(job_id)
        self.check_owner(peer, job, "reprioritising")
        if job.handed:
            raise RpcError(CONFLICT, f"job {job_id} is next: handed to the worker, it starts after the running "
                                     "batch and its priority can no longer change", {"state": job.state})
        if job.state != QUEUED:
            raise RpcError(CONFLICT, f"job {job_id} is {job.state}; only a queued job's priority can change",
                           {"state": job.state})
        old = job.priority_name
        self.index.remove(job)
        job.priority = priority
        self.index.add(job)
        await self.audit(peer, "job.priority", job_id, {"from": old, "to": job.priority_name})
        await self.store.save(job)
        self._publish_state(job)
        return {"job_id": job_id, "priority": job.priority_name, "position": self.position(job)}

    async def set_paused(self, peer: Peer | None, paused: bool) -> dict[str, Any]:
        changed = self.paused != paused
        self.paused = paused
        if changed:
            await self.audit(peer, "queue.pause" if paused else "queue.resume", "", {})
        await self.store.set_setting("paused", "1" if paused else "0")
        if changed:
            self._publish_queue("paused" if paused else "resumed")
            self.work.set()
        return self.status()

    # -- the dispatcher's side -----------------------------------------------------------------

    def next_batch(self, image_budget: int | None = None, *, can_run: Callable[[Job], bool] | None = None,
                   holds: Callable[[Job], bool] | None = None) -> Jobs:
        """The next batch for one worker (daemon.queue.scheduler.pick_batch: what it can run, and
        model affinity by what it `holds`)."""
        return scheduler.pick_batch(self.queued(), time.time(), self.policy, image_budget, can_run=can_run,
                                    holds=holds)

    def hand_over(self, jobs: Jobs) -> None:
        """Handed to the worker, where they may wait behind the running batch: out of the index, but
        still queued (and kept as queued) until the worker begins them."""
        for job in jobs:
            self.index.remove(job)
            self._handed[job] = None
            job.handed, job.started_at, job.progress, job.error = True, None, 0.0, None
            self._publish_state(job)

    def begin(self, jobs: Jobs) -> Jobs:
        """The worker began the batch (its first step): the jobs still handed run from now on, and an
        attempt counts. At once, so this very step's progress is theirs; `record_start` commits it."""
        now = time.time()
        live = [job for job in jobs if job.handed]
        for job in live:
            self._handed.pop(job, None)
            job.handed, job.state, job.started_at = False, RUNNING, now
            job.attempts += 1
        return live

    async def record_start(self, jobs: Jobs) -> None:
        batch = [job.job_id for job in jobs]
        await asyncio.gather(*(self.audit(None, "job.start", job.job_id, {"attempt": job.attempts, "batch": batch})
                               for job in jobs))
        await self.store.save_many(jobs)
        for job in jobs:
            self._publish_state(job)

    def progress(self, jobs: Jobs, step: int, steps: int) -> None:
        """Each running job's progress is kept at every step; its `progress` event goes out at the
        first and last step and otherwise at most every PROGRESS_EVERY seconds."""
        fraction = step / steps if steps else 0.0
        now = time.monotonic()
        announce = self.bus.wants("job")
        for job in jobs:
            if job.state != RUNNING:
                continue
            job.progress = fraction
            last = self._progress_sent.get(job.job_id)
            if announce and (last is None or step >= steps or now - last >= PROGRESS_EVERY):
                self._progress_sent[job.job_id] = now
                self.bus.publish("job", {"kind": "progress", "job_id": job.job_id,
                                         "progress": round(fraction, 4), "step": step, "steps": steps})

    def _finish(self, job: Job, state: str, error: str | None = None) -> None:
        if job.state == QUEUED:
            self.index.remove(job)
        self._handed.pop(job, None)
        self._progress_sent.pop(job.job_id, None)
        job.handed = False
        job.state, job.finished_at, job.error = state, time.time(), error
        if state != "succeeded":
            job.progress = job.progress if state == CANCELLED else 0.0
        self.active.pop(job.job_id, None)

    async def finish(self, jobs: Jobs, state: str, error: str | None = None) -> None:
        for job in jobs:
            self._finish(job, state, error)
            if state == "succeeded":
                job.progress = 1.0
        await asyncio.gather(*(self.audit(None, "job.finish", job.job_id, {"state": state, "error": error,
                                                                          "outputs": len(job.outputs)})
                               for job in jobs))
        await self.store.save_many(jobs)
        for job in jobs:
            self._publish_state(job)
        self.work.set()

    async def requeue(self, jobs: Jobs, reason: str, count_attempt: bool = True) -> Jobs:
        """Back to the queue after an interruption; jobs past the attempt limit are quarantined
        (failed, with the reason). Jobs of a crashed batch run alone from then on, so one poison
        job cannot take the others down with it. Returns the jobs that failed."""
        failed = []
        for job in jobs:
            self._handed.pop(job, None)
            self._progress_sent.pop(job.job_id, None)
            job.handed = False
            if job.started_at is None:
                pass  # it never began: neither an attempt nor a suspect
            elif not count_attempt:
                job.attempts = max(0, job.attempts - 1)
            elif len(jobs) > 1:
                job.isolate = True
            if job.attempts >= self.config.queue.max_attempts:
                self._finish(job, FAILED, f"quarantined after {job.attempts} attempts; last: {reason}")
                failed.append(job)
            else:
                job.state, job.progress, job.started_at = QUEUED, 0.0, None
                self.index.add(job)
        await self.store.save_many(jobs)
        for job in jobs:
            self._publish_state(job)
        self.work.set()
        return failed
