"""One worker's lane: its process, the batches it runs, and what keeps it healthy.

A lane owns one worker subprocess (one device) and everything that is that worker's alone: the
batches in flight with it (the running one and the next), its memory model, leak detector,
crash-loop breaker, restart backoff and the models it holds (residency). The box's scheduler
(daemon.dispatch.box) hands it batches from the one queue; the lane runs them, records the
outcome, and hands finished images to the shared output writer. A dead worker is restarted with
backoff and only its own jobs are re-queued; a crash loop halts this lane alone (the queue
pauses only when no lane is left); a leaking worker is drained and restarted.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Awaitable, Callable
from typing import Any, Protocol

from daemon.catalog import DoesNotFit, ModelCatalog, Residency
from daemon.config import Section
from daemon.dispatch.writing import OutputWriter
from daemon.queue.jobs import CANCELLED, FAILED, RUNNING, Job
from daemon.queue.manager import QueueManager
from daemon.worker.leak import LeakDetector, leak_figure
from daemon.worker.memory_model import MemoryModel
from daemon.worker.supervisor import BatchFailed, WorkerCrashed, WorkerLoadFailed, WorkerSupervisor

log = logging.getLogger("sai.dispatch")

IN_FLIGHT = 2
"""Batches handed to a worker at once: the running one and the next."""

WatchWork = Callable[["asyncio.Task[Any]", str, str, bool], object]
"""Told of each task a lane starts for a batch: (task, what it is, what it does, whether jobs
stay `running` for good if it raises)."""

BatchFigures = Callable[[list[Job], dict[str, Any]], Awaitable[None]]
"""Given each batch's jobs and figures (jobs, images, worker memory, worker name) for reports and metrics."""

FitKey = tuple[str, int, int]
"""What decides whether a lane can run a job (`Lane.misfit`): its model and its image size."""


def fit_key(job: Job) -> FitKey:
    return (job.model_id, int(job.params["width"]), int(job.params["height"]))


def once_per_fit(verdict: Callable[[Job], bool]) -> Callable[[Job], bool]:
    """`verdict` asked once per model and size: a pick over hundreds of queued jobs of a few
    shapes asks a few times, not once per job."""
    seen: dict[FitKey, bool] = {}

    def ask(job: Job) -> bool:
        key = fit_key(job)
        if key not in seen:
            seen[key] = verdict(job)
        return seen[key]

    return ask


class WorkerEvents(Protocol):
    """Who hears the facts about a worker (`ready`, `start_failed`, `crashed`, `crash_loop`,
    `leak`, `restarted`) and decides what they mean for operators (daemon.reactions)."""

    def worker_event(self, kind: str, data: dict[str, Any], worker: dict[str, Any]) -> None:
        """`data`: the fact's details; `worker`: the worker's state as `daemon.status` shows it
        (its `name` says which worker)."""


class Lane:
    def __init__(self, manager: QueueManager, worker: WorkerSupervisor, writer: OutputWriter, policy: Section, *,
                 max_batch: int, memory: MemoryModel, models: ModelCatalog, worker_events: WorkerEvents,
                 batch_figures: BatchFigures, watch_work: WatchWork, only_lane: Callable[[], bool]) -> None:
        """`memory`: this device's memory model, fed its worker's measured peaks, sizing its batches.
        `models`: the configured models; each batch names its model to the worker, after
        unloading the least recently used ones the new one would not fit beside (this lane's
        residency). `only_lane()`: whether no lane can still take work, asked once this one is
        halted (its crash loop then pauses the queue). `watch_work` sees every batch and
        bookkeeping task: one that raises leaves its jobs `running` for good, so the daemon watches
        them (daemon.background)."""
        self.manager = manager
        self.worker = worker
        self.name = worker.name
        self.writer = writer
        self.policy = policy
        self.max_batch = max_batch
        self.memory = memory
        self.models = models
        self.residency = Residency()
        self.leak = LeakDetector(policy.leak_window, policy.leak_slope_mb)
        self.crashes: deque[float] = deque()
        self.halted: str | None = None
        self.cancel_requested: dict[str, str] = {}
        self.finishing: set[asyncio.Task[None]] = set()
        self.inflight: set[asyncio.Task[None]] = set()
        self.stopping = False
        self._abandon = False
        self._counted_crash = 0
        self._restart_at = 0.0
        self._backoff = 1.0
        self._restart_reason: str | None = None
        self._starting: asyncio.Task[None] | None = None
        self._start_lock = asyncio.Lock()
        self._worker_events = worker_events
        self._batch_figures = batch_figures
        self._watch_work = watch_work
        self._only_lane = only_lane

    # -- what the box's scheduler asks ---------------------------------------------------------------

    def free_slots(self) -> int:
        """How many batches this lane takes now (0 while it starts, restarts, is halted or stops)."""
        if self.stopping or self.halted or self._restart_reason is not None or not self.worker.alive:
            return 0
        if self.worker.state not in ("ready", "busy"):
            return 0
        return IN_FLIGHT - len(self.inflight)

    @property
    def can_take_work(self) -> bool:
        """Not halted and not stopping: it runs work now or will once (re)started."""
        return not self.stopping and not self.halted

    def holds(self, job: Job) -> bool:
        """Its worker holds (or will have loaded, by the batches already sent) the job's model."""
        return (job.model_id or self.models.default_name) in self.residency.order

    @property
    def device(self) -> str:
        """The device its worker loads models on ("cpu", "cuda…"), "" while not known (auto, not started)."""
        device = str(self.worker.info.get("device") or self.worker.device)
        return "" if device == "auto" else device

    def model_misfit(self, job: Job) -> str | None:
        """Why this device can never load `job`'s model, or None (also when not known)."""
        name = job.model_id or self.models.default_name
        if name not in self.models.entries:
            return None
        return self.models.misfit(name, self.worker.capacity(), self.residency, self.device)

    def misfit(self, job: Job) -> str | None:
        """Why this device can never run `job` (its model or its image size does not fit), or None.
        It depends on the job's `fit_key` alone."""
        return (self.model_misfit(job)
                or self.memory.refusal(job.params["width"], job.params["height"], self.worker.capacity()))

    def can_run(self, job: Job) -> bool:
        return self.misfit(job) is None

    def maintain(self, queued: bool) -> None:
        """Between batches: a restart asked for (once its batches are done), or a start of a worker
        that is not running while there is work. Runs beside the scheduler, never blocking it."""
        if self.stopping or (self._starting is not None and not self._starting.done()):
            return
        if self._restart_reason is not None:
            if not self.inflight:
                self._spawn_start(self._restart(self._restart_reason))
            return
        if queued and not self.halted and not self.worker.alive and not self.inflight:
            self._spawn_start(self._start_after_backoff())

    def _spawn_start(self, coro: Awaitable[None]) -> None:
        async def run() -> None:
            await coro

        self._starting = asyncio.create_task(run(), name=f"sai-start-{self.name}")
        self._watch_work(self._starting, f"worker {self.name} start", "starting or restarting a worker", False)

    async def _start_after_backoff(self) -> None:
        await asyncio.sleep(max(0.0, self._restart_at - time.monotonic()))
        await self.start_worker()
        self.manager.work.set()

    async def start_worker(self) -> bool:
        async with self._start_lock:
            if self.worker.alive:
                return True
            return await self._spawn_worker()

    async def _spawn_worker(self) -> bool:
        self.models.worker_starting(self.residency, self.name)
        try:
            info = await self.worker.start()
        except WorkerLoadFailed as exc:
            log.error("worker %s could not start: %s; retrying in %.0f s", self.name, exc, self._backoff)
            self._worker_event("start_failed", {"error": str(exc)})
            self._restart_at = time.monotonic() + self._backoff
            self._backoff = min(self._backoff * 2, self.policy.max_backoff)
            return False
        self._backoff = 1.0
        self.models.worker_started(info, self.name)
        self._worker_event("ready", info)
        return True

    # -- running a batch --------------------------------------------------------------------------------

    def launch(self, batch: list[Job]) -> None:
        """Take `batch` at once (handed over before the scheduler looks at the queue again) and run it."""
        self.manager.hand_over(batch)
        for job in batch:
            job.worker = self.name
        task = asyncio.create_task(self._run_batch(batch), name=f"sai-batch-{self.name}")
        self._watch_work(task, "batch runner", "running a batch and recording its outcome", True)
        self.inflight.add(task)
        task.add_done_callback(self._batch_done)

    def _batch_done(self, task: asyncio.Task[None]) -> None:
        self.inflight.discard(task)
        self.manager.work.set()

    def _items(self, batch: list[Job]) -> list[dict[str, Any]]:
        return [{"job_id": job.job_id, "index": i, "prompt": job.prompt, "negative_prompt": job.negative_prompt,
                 "seed": job.image_seed(i)} for job in batch for i in range(job.count)]

    def _on_progress(self, batch: list[Job], step: int, steps: int) -> None:
        self.manager.progress(batch, step, steps)
        stopped = [job for job in batch if job.job_id in self.cancel_requested and job.state == RUNNING]
        if stopped:
            self._track(self._cancelled(stopped))

    def _track(self, coro: Awaitable[None], holds_jobs: bool = True) -> None:
        """Run bookkeeping beside the batch; shutdown waits for it."""
        async def run() -> None:
            await coro

        task = asyncio.create_task(run())
        if holds_jobs:
            self._watch_work(task, "job bookkeeping", "recording job starts, cancels and outputs", True)
        else:
            self._watch_work(task, "batch figures", "recording batch figures for reports", False)
        self.finishing.add(task)
        task.add_done_callback(self.finishing.discard)

    async def _cancelled(self, jobs: list[Job]) -> None:
        for job in jobs:
            job.state = "cancelling"
        by = {self.cancel_requested.get(job.job_id, "") for job in jobs}
        await self.manager.finish(jobs, CANCELLED, f"cancelled by {', '.join(sorted(by))} while running")

    def _figures(self, batch: list[Job], figures: dict[str, Any]) -> None:
        self._track(self._batch_figures(batch, {**figures, "worker": self.name}), holds_jobs=False)

    async def _run_batch(self, batch: list[Job]) -> None:
        head = batch[0].params
        budget = self.memory.image_budget(head["width"], head["height"], self.worker.capacity())
        chunk = self.max_batch if budget is None else min(self.max_batch, budget)
        model = self.models.get(batch[0].model_id) or self.models.default
        if not await self._make_room(model.name, batch):
            return
        command = {"width": head["width"], "height": head["height"], "steps": head["steps"],
                   "guidance": head["guidance"], "chunk": chunk, "items": self._items(batch),
                   "model": model.command()}
        log.info("handing worker %s a batch of %d job(s), %d image(s): %s", self.name, len(batch),
                 len(command["items"]), " ".join(job.job_id for job in batch))
        started = False

        def on_progress(step: int, steps: int) -> None:
            nonlocal started
            if not started:  # it may have waited in the worker's queue behind the previous batch
                started = True
                self._began(batch, model.family_now, model.weights_sha256 or "")
            self._on_progress(batch, step, steps)

        try:
            result = await self.worker.run_batch(command, on_progress)
        except WorkerCrashed as exc:
            self.models.worker_gone(self.residency, self.name)
            live = [job for job in batch if job.state == RUNNING or job.handed]
            failed = await self.manager.requeue(live, f"{exc} (worker {self.name})", count_attempt=not self._abandon)
            if not self._abandon and exc.generation != self._counted_crash:
                self._counted_crash = exc.generation
                await self._crashed(str(exc), batch, failed)
            return
        except BatchFailed as exc:
            if exc.kind == "load":  # the model, not the jobs: operators must hear of it
                self._worker_event("model_load_failed", {"error": str(exc), "model": command["model"]["name"]})
            live = [job for job in batch if job.state == RUNNING or job.handed]
            self._figures(live, {"jobs": len(batch), "images": len(command["items"]),
                                 "worker_rss": self.worker.info.get("memory", {}).get("rss")})
            await self.manager.finish(live, FAILED, f"generation failed: {exc}")
            return
        if not started:  # every job of it was cancelled or withdrawn before the worker began it
            await self.manager.record_start(self.manager.begin(batch))
        self._backoff = 1.0
        self._check_leak(leak_figure(result.memory))
        self.memory.observe(result.peak)
        self._figures(batch, {"jobs": len(batch), "images": len(command["items"]),
                              "peak_bytes_per_image": result.peak.get("bytes_per_image"),
                              "worker_rss": result.memory.get("rss")})
        done = [job for job in batch if job.state == RUNNING]
        cancelled = [job for job in done if job.job_id in result.cancelled or job.job_id in self.cancel_requested]
        if cancelled:
            await self._cancelled(cancelled)
        for job in batch:
            self.cancel_requested.pop(job.job_id, None)
        finished = [job for job in done if job not in cancelled]
        if finished:
            self._track(self.writer.write(finished, result))

    def _began(self, batch: list[Job], family: str, weights_sha256: str) -> None:
        """The worker's first step of the batch: the jobs run from now on, on this worker's device."""
        device = str(self.worker.info.get("device") or self.worker.device)
        if device == "cuda" and self.worker.device.startswith("cuda"):
            device = self.worker.device  # it sees its one GPU as cuda:0; say which GPU of the box
        for job in batch:  # the worker has loaded the model by its first step
            job.model_family, job.weights_sha256 = family, weights_sha256
            job.worker, job.device = self.name, device
        self._track(self.manager.record_start(self.manager.begin(batch)))

    async def _make_room(self, name: str, batch: list[Job]) -> bool:
        """Unload the least recently used models that `name` would not fit beside (the worker does
        it in order, after the batches sent before). A model that can never fit fails the batch's
        jobs with the reason and an alert; the queue goes on. False when the batch cannot run."""
        try:
            unload = self.models.plan_load(name, self.worker.capacity(), self.residency, self.device)
        except DoesNotFit as exc:
            log.error("worker %s: %s", self.name, exc)
            await self.manager.finish([job for job in batch if job.handed], FAILED, f"{exc} (worker {self.name})")
            self._worker_event("model_fit", {"error": str(exc), "model": name})
            return False
        for other in unload:
            log.info("worker %s: unloading model %s (least recently used) to make room for %s", self.name, other,
                     name)
            try:
                self.worker.unload(other)
            except WorkerCrashed:
                pass  # the batch's own send finds the worker gone
        return True

    # -- health ------------------------------------------------------------------------------------------

    def view(self) -> dict[str, Any]:
        """The worker as `daemon.status` and the `worker.*` events show it: its name and device, its
        state, and `halted` (why restarts stopped after a crash loop, or None)."""
        return {**self.worker.status(), "halted": self.halted}

    def _worker_event(self, kind: str, data: dict[str, Any]) -> None:
        self._worker_events.worker_event(kind, data, self.view())

    async def _crashed(self, reason: str, batch: list[Job], failed: list[Job]) -> None:
        """Count the crash; K crashes in T seconds halt this worker's restarts (and pause the queue
        when no other worker can take its work)."""
        now = time.monotonic()
        self.crashes.append(now)
        while self.crashes and now - self.crashes[0] > self.policy.crash_window:
            self.crashes.popleft()
        details = {"error": reason, "jobs": [j.job_id for j in batch], "quarantined": [j.job_id for j in failed],
                   "crashes": len(self.crashes)}
        self._worker_event("crashed", details)
        if len(self.crashes) >= self.policy.crash_loop_count:
            self.halted = (f"worker {self.name} crashed {len(self.crashes)} times in "
                           f"{self.policy.crash_window:.0f} s; last: {reason}")
            if self._only_lane():
                log.critical("%s; not restarting it, queue paused (run `sai worker restart` when fixed)", self.halted)
                await self.manager.set_paused(None, True)
            else:
                log.critical("%s; not restarting it, the other workers go on (`sai worker restart %s` when fixed)",
                             self.halted, self.name)
            self._worker_event("crash_loop", {**details, "error": self.halted})
            return
        log.warning("restarting worker %s in %.0f s", self.name, self._backoff)
        self._restart_at = time.monotonic() + self._backoff
        self._backoff = min(self._backoff * 2, self.policy.max_backoff)

    def _check_leak(self, rss: float | None) -> None:
        slope = self.leak.add(rss)
        if slope is None:
            return
        message = (f"worker {self.name} memory grows {slope:.1f} MiB per batch over the last {self.leak.window} "
                   f"batches (threshold {self.policy.leak_slope_mb:g})")
        log.warning("possible leak: %s", message)
        self._worker_event("leak", {"error": message, "slope_mb": round(slope, 2), "rss": rss,
                                    "auto_restart": self.policy.leak_auto_restart})
        self.leak.reset()
        if self.policy.leak_auto_restart:
            self.request_restart(f"leak: {message}")

    def request_restart(self, reason: str) -> dict[str, Any]:
        """Restart the worker once its current batch is done (at once when idle)."""
        self._restart_reason = reason
        self.halted = None
        self.crashes.clear()
        self.manager.work.set()
        return {"worker": self.name, "restarting": True, "after_batch": bool(self.inflight), "reason": reason}

    async def _restart(self, reason: str) -> None:
        self._restart_reason = None
        log.info("restarting worker %s: %s", self.name, reason)
        await self.worker.stop()
        self.leak.reset()
        self._backoff = 1.0
        if await self.start_worker():
            self._worker_event("restarted", {"reason": reason})
        self.manager.work.set()

    # -- cancel and shutdown --------------------------------------------------------------------------

    def cancel_running(self, job: Job, by: str) -> None:
        self.cancel_requested[job.job_id] = by
        try:
            self.worker.cancel([job.job_id])
        except WorkerCrashed:
            pass

    async def withdraw_waiting(self) -> None:
        """At shutdown: the batch waiting behind the running one goes back to the queue at once."""
        waiting = [job for job in self.manager.handed() if job.worker == self.name]
        if not waiting:
            return
        try:
            self.worker.cancel([job.job_id for job in waiting])
        except WorkerCrashed:
            pass  # its batches come back through the crash path
        log.info("shutting down: %d job(s) waiting in the worker go back to the queue (%s)", len(waiting), self.name)
        await self.manager.requeue(waiting, "withdrawn from the worker at shutdown", count_attempt=False)

    async def shutdown(self, grace: float) -> None:
        """Let the running batch finish within `grace` seconds, else put it back; stop the worker."""
        self.stopping = True
        await self.withdraw_waiting()
        if self._starting is not None and not self._starting.done():
            self._starting.cancel()
            await asyncio.gather(self._starting, return_exceptions=True)
        if self.inflight:
            log.info("waiting up to %.0f s for the running batch of worker %s to finish", grace, self.name)
            _, pending = await asyncio.wait(self.inflight, timeout=grace)
            if pending:
                log.warning("running batch of worker %s did not finish within %.0f s; putting it back in the queue",
                            self.name, grace)
                self._abandon = True
                await self.worker.kill()
                await asyncio.gather(*pending, return_exceptions=True)
        if self.finishing:
            await asyncio.gather(*self.finishing, return_exceptions=True)
        await self.worker.stop()
