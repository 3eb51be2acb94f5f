"""Moves work from the queue to the worker and results to the output path.

One loop: when the worker is free and the queue is not paused, take the next batch, run it,
hand the images to the output path in the thread pool (overlapping the next generation), and
record the outcome. A dead worker is restarted with backoff and its jobs re-queued; a crash
loop stops the restarts and pauses the queue; a leaking worker is drained and restarted.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import time
from collections import deque
from collections.abc import Awaitable, Callable
from concurrent.futures import Executor
from typing import Any, Protocol

from daemon.catalog import DoesNotFit, ModelCatalog
from daemon.config import Section
from daemon.queue.jobs import CANCELLED, FAILED, RUNNING, SUCCEEDED, Job
from daemon.queue.manager import Auditor, QueueManager
from daemon.worker.leak import LeakDetector
from daemon.worker.memory_model import MemoryModel
from daemon.worker.supervisor import BatchFailed, BatchResult, WorkerCrashed, WorkerLoadFailed, WorkerSupervisor

log = logging.getLogger("sai.dispatch")


class OutputSink(Protocol):
    def write(self, job: Job, index: int, shape: tuple[int, ...], pixels: bytes) -> dict[str, Any]:
        """Turn one generated image into stored output files (runs in a worker thread)."""

    def discard(self, job_id: str, count: int) -> None:
        """Remove what was written of a job's images when its outputs could not all be written."""


NO_SPACE = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)
"""Write errors that mean the outputs filesystem (or a file-size limit) is full, not that the job is bad."""

IN_FLIGHT = 2
"""Batches handed to the worker at once: the running one and the next."""


WatchWork = Callable[["asyncio.Task[Any]", str, str, bool], object]
"""Told of each task the dispatcher starts for a batch: (task, what it is, what it does, whether jobs
stay `running` for good if it raises)."""

BatchFigures = Callable[[list[Job], dict[str, Any]], Awaitable[None]]
"""Given each batch's jobs and figures (jobs, images, worker memory) for reports and metrics."""


class WorkerEvents(Protocol):
    """Who hears the facts about the worker (`ready`, `start_failed`, `crashed`, `crash_loop`,
    `leak`, `restarted`) and decides what they mean for operators (daemon.reactions)."""

    def worker_event(self, kind: str, data: dict[str, Any], worker: dict[str, Any]) -> None:
        """`data`: the fact's details; `worker`: the worker's state as `daemon.status` shows it."""


class Dispatcher:
    def __init__(self, manager: QueueManager, worker: WorkerSupervisor, sink: OutputSink, executor: Executor,
                 max_batch: int, policy: Section, *, audit: Auditor, memory: MemoryModel, models: ModelCatalog,
                 worker_events: WorkerEvents,
                 outputs_blocked: Callable[[str | None], None], batch_figures: BatchFigures,
                 watch_work: WatchWork) -> None:
        """`audit` records each output written (the queue records the jobs' own changes).
        `memory`: the memory model the queue also refuses oversized jobs with; the dispatcher
        feeds it the worker's measured peaks and sizes batches by it. `models`: the configured
        models; each batch names its model to the worker, after unloading the least recently used
        ones the new one would not fit beside. `outputs_blocked(message)`
        when outputs cannot be written for lack of space, `(None)` once they can again.
        `watch_work` sees every batch, output and bookkeeping task: one that raises leaves its
        jobs `running` for good, so the daemon watches them (daemon.background)."""
        self.manager = manager
        self._audit = audit
        self._watch_work = watch_work
        self.worker = worker
        self.sink = sink
        self.executor = executor
        self.max_batch = max_batch
        self.cancel_requested: dict[str, str] = {}
        self.finishing: set[asyncio.Task[None]] = set()
        self.stopping = False
        self._abandon = False
        self._inflight: set[asyncio.Task[None]] = set()
        self._counted_crash = 0
        self._restart_at = 0.0
        self._backoff = 1.0
        self._start_lock = asyncio.Lock()
        self.policy = policy
        self.crashes: deque[float] = deque()
        self.halted: str | None = None
        self.leak = LeakDetector(policy.leak_window, policy.leak_slope_mb)
        self.memory = memory
        self.models = models
        self._restart_reason: str | None = None
        self._worker_events = worker_events
        self._outputs_blocked_hook = outputs_blocked
        self._outputs_blocked = False
        self._batch_figures = batch_figures

    async def run(self) -> None:
        """Keep up to IN_FLIGHT batches with the worker: one running and the next waiting in its
        queue, so the worker goes from one to the next without waiting for the daemon."""
        work = self.manager.work
        while not self.stopping:
            if self._inflight:
                woken = asyncio.create_task(work.wait())
                await asyncio.wait([*self._inflight, woken], return_when=asyncio.FIRST_COMPLETED)
                woken.cancel()
            else:
                await work.wait()
            work.clear()
            if self.stopping:
                break
            if self._restart_reason is not None:
                if self._inflight:
                    continue  # drain first: restart between batches
                await self._restart(self._restart_reason)
            if (len(self._inflight) >= IN_FLIGHT or self.manager.paused or not self.manager.queued()
                    or self.halted):
                continue
            if not self.worker.alive:
                if self._inflight:
                    continue  # the batches of the dead worker are still being put back
                await asyncio.sleep(max(0.0, self._restart_at - time.monotonic()))
                if not await self._start_worker():
                    continue
            batch = self.manager.next_batch()
            if not batch:
                continue
            work.set()
            task = asyncio.create_task(self._run_batch(batch), name="sai-batch")
            self._watch_work(task, "batch runner", "running a batch and recording its outcome", True)
            self._inflight.add(task)
            task.add_done_callback(self._inflight.discard)

    async def warm_up(self) -> None:
        """Load the model at start-up so the first job does not wait for it."""
        if await self._start_worker():
            self.manager.work.set()

    async def _start_worker(self) -> bool:
        async with self._start_lock:
            if self.worker.alive:
                return True
            return await self._spawn_worker()

    async def _spawn_worker(self) -> bool:
        self.models.worker_starting()
        try:
            info = await self.worker.start()
        except WorkerLoadFailed as exc:
            log.error("worker could not start: %s; retrying in %.0f s", exc, self._backoff)
            self._worker_event("start_failed", {"error": str(exc)})
            await asyncio.sleep(self._backoff)
            self._backoff = min(self._backoff * 2, self.policy.max_backoff)
            self.manager.work.set()
            return False
        self._backoff = 1.0
        self.models.worker_started(info)
        self._worker_event("ready", info)
        return True

    def _items(self, batch: list[Job]) -> list[dict[str, Any]]:
        return [{"job_id": job.job_id, "index": i, "prompt": job.prompt, "negative_prompt": job.negative_prompt,
                 "seed": job.image_seed(i)} for job in batch for i in range(job.count)]

    def _on_progress(self, batch: list[Job], step: int, steps: int) -> None:
        self.manager.progress(batch, step, steps)
        stopped = [job for job in batch if job.job_id in self.cancel_requested and job.state == RUNNING]
        if stopped:
            self._track(self._cancelled(stopped))

    def _track(self, coro: Any, holds_jobs: bool = True) -> None:
        """Run bookkeeping beside the batch; shutdown waits for it."""
        task = asyncio.create_task(coro)
        if holds_jobs:
            self._watch_work(task, "job bookkeeping", "recording job starts and cancels", True)
        else:
            self._watch_work(task, "batch figures", "recording batch figures for reports", False)
        self.finishing.add(task)
        task.add_done_callback(self.finishing.discard)

    async def _cancelled(self, jobs: list[Job]) -> None:
        for job in jobs:
            job.state = "cancelling"
        by = {self.cancel_requested.get(job.job_id, "") for job in jobs}
        await self.manager.finish(jobs, CANCELLED, f"cancelled by {', '.join(sorted(by))} while running")

    async def _run_batch(self, batch: list[Job]) -> None:
        self.manager.hand_over(batch)
        head = batch[0].params
        budget = self.memory.image_budget(head["width"], head["height"], self.worker.capacity())
        chunk = self.max_batch if budget is None else min(self.max_batch, budget)
        model = self.models.get(batch[0].model_id) or self.models.default
        if not await self._make_room(model.name, batch):
            return
        command = {"width": head["width"], "height": head["height"], "steps": head["steps"],
                   "guidance": head["guidance"], "chunk": chunk, "items": self._items(batch),
                   "model": model.command()}
        log.info("handing the worker a batch of %d job(s), %d image(s): %s", len(batch), len(command["items"]),
                 " ".join(job.job_id for job in batch))
        started = False

        def on_progress(step: int, steps: int) -> None:
            nonlocal started
            if not started:  # it may have waited in the worker's queue behind the previous batch
                started = True
                for job in batch:  # the worker has loaded the model by its first step
                    job.model_family, job.weights_sha256 = model.family_now, model.weights_sha256 or ""
                self._track(self.manager.record_start(self.manager.begin(batch)))
            self._on_progress(batch, step, steps)

        try:
            result = await self.worker.run_batch(command, on_progress)
        except WorkerCrashed as exc:
            self.models.worker_gone()
            live = [job for job in batch if job.state == RUNNING or job.handed]
            failed = await self.manager.requeue(live, str(exc), count_attempt=not self._abandon)
            if not self._abandon and exc.generation != self._counted_crash:
                self._counted_crash = exc.generation
                await self._crashed(str(exc), batch, failed)
            return
        except BatchFailed as exc:
            if exc.kind == "load":  # the model, not the jobs: operators must hear of it
                self._worker_event("model_load_failed", {"error": str(exc), "model": command["model"]["name"]})
            live = [job for job in batch if job.state == RUNNING or job.handed]
            self._track(self._batch_figures(live, {"jobs": len(batch), "images": len(command["items"]),
                                                     "worker_rss": self.worker.info.get("memory", {}).get("rss")}),
                        holds_jobs=False)
            await self.manager.finish(live, FAILED, f"generation failed: {exc}")
            return
        if not started:  # every job of it was cancelled or withdrawn before the worker began it
            await self.manager.record_start(self.manager.begin(batch))
        self._backoff = 1.0
        self._check_leak(result.memory.get("rss"))
        self.memory.observe(result.peak)
        self._track(self._batch_figures(batch, {"jobs": len(batch), "images": len(command["items"]),
                                                  "peak_bytes_per_image": result.peak.get("bytes_per_image"),
                                                  "worker_rss": result.memory.get("rss")}), holds_jobs=False)
        done = [job for job in batch if job.state == RUNNING]
        cancelled = [job for job in done if job.job_id in result.cancelled or job.job_id in self.cancel_requested]
        if cancelled:
            await self._cancelled(cancelled)
        for job in batch:
            self.cancel_requested.pop(job.job_id, None)
        finished = [job for job in done if job not in cancelled]
        if finished:
            task = asyncio.create_task(self._write_outputs(finished, result), name="sai-outputs")
            self._watch_work(task, "output writer", "writing a batch's outputs and finishing its jobs", True)
            self.finishing.add(task)
            task.add_done_callback(self.finishing.discard)

    async def _make_room(self, name: str, batch: list[Job]) -> bool:
        """Unload the least recently used models that `name` would not fit beside (the worker does
        it in order, after the batches sent before). A model that can never fit fails the batch's
        jobs with the reason and an alert; the queue goes on. False when the batch cannot run."""
        try:
            unload = self.models.plan_load(name, self.worker.capacity())
        except DoesNotFit as exc:
            log.error("%s", exc)
            await self.manager.finish([job for job in batch if job.handed], FAILED, str(exc))
            self._worker_event("model_fit", {"error": str(exc), "model": name})
            return False
        for other in unload:
            log.info("unloading model %s (least recently used) to make room for %s", other, name)
            try:
                self.worker.unload(other)
            except WorkerCrashed:
                pass  # the batch's own send finds the worker gone
        return True

    async def _write_outputs(self, jobs: list[Job], result: BatchResult) -> None:
        loop = asyncio.get_running_loop()
        for position, job in enumerate(jobs):
            try:
                outputs = []
                for index in range(job.count):
                    if (job.job_id, index) not in result.images:
                        raise RuntimeError(f"the worker returned no image {index}")
                    shape, pixels = result.images[(job.job_id, index)]
                    record = await loop.run_in_executor(self.executor, self.sink.write, job, index, shape, pixels)
                    outputs.append(record)
                    await self._audit(None, "output.write", job.job_id, {
                        k: record[k] for k in ("index", "png_sha256", "sai_sha256", "fingerprint", "kid",
                                               "signing_kid") if k in record})
            except Exception as exc:
                await loop.run_in_executor(self.executor, self.sink.discard, job.job_id, job.count)
                if isinstance(exc, OSError) and exc.errno in NO_SPACE:
                    await self._no_space(jobs[position:], exc)
                    return
                log.exception("writing outputs of %s failed", job.job_id)
                await self.manager.finish([job], FAILED, f"writing outputs failed: {exc}")
                continue
            job.outputs = outputs
            await self.manager.finish([job], SUCCEEDED)
            if self._outputs_blocked:
                self._outputs_blocked = False
                self._outputs_blocked_hook(None)

    async def _no_space(self, jobs: list[Job], exc: OSError) -> None:
        """The outputs filesystem is full: the jobs go back to the queue (no attempt charged; what
        was written of them is gone) and the queue pauses until an operator makes room and resumes."""
        where = getattr(self.sink, "outputs_dir", "the outputs directory")
        message = (f"cannot write outputs under {where}: {exc.strerror or exc}; {len(jobs)} job(s) put back in "
                   "the queue and the queue paused: free space there, then `sai resume`")
        log.error("%s", message)
        await self.manager.requeue(jobs, message, count_attempt=False)
        await self.manager.set_paused(None, True)
        self._outputs_blocked = True
        self._outputs_blocked_hook(message)

    def worker_view(self) -> dict[str, Any]:
        """The worker as `daemon.status` and the `worker.*` events show it: its state, and `halted`
        (why restarts stopped after a crash loop, or None)."""
        return {**self.worker.status(), "halted": self.halted}

    def _worker_event(self, kind: str, data: dict[str, Any]) -> None:
        self._worker_events.worker_event(kind, data, self.worker_view())

    async def _crashed(self, reason: str, batch: list[Job], failed: list[Job]) -> None:
        """Count the crash; K crashes in T seconds halt restarts and pause the queue."""
        now = time.monotonic()
        self.crashes.append(now)
        while self.crashes and now - self.crashes[0] > self.policy.crash_window:
            self.crashes.popleft()
        details = {"error": reason, "jobs": [j.job_id for j in batch], "quarantined": [j.job_id for j in failed],
                   "crashes": len(self.crashes)}
        self._worker_event("crashed", details)
        if len(self.crashes) >= self.policy.crash_loop_count:
            self.halted = (f"worker crashed {len(self.crashes)} times in {self.policy.crash_window:.0f} s; "
                           f"last: {reason}")
            log.critical("%s; not restarting it, queue paused (run `sai worker restart` when fixed)", self.halted)
            await self.manager.set_paused(None, True)
            self._worker_event("crash_loop", {**details, "error": self.halted})
            return
        log.warning("restarting the worker in %.0f s", self._backoff)
        self._restart_at = time.monotonic() + self._backoff
        self._backoff = min(self._backoff * 2, self.policy.max_backoff)

    def _check_leak(self, rss: float | None) -> None:
        slope = self.leak.add(rss)
        if slope is None:
            return
        message = (f"worker memory grows {slope:.1f} MiB per batch over the last {self.leak.window} batches "
                   f"(threshold {self.policy.leak_slope_mb:g})")
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
        return {"restarting": True, "after_batch": bool(self._inflight), "reason": reason}

    async def _restart(self, reason: str) -> None:
        self._restart_reason = None
        log.info("restarting the worker: %s", reason)
        await self.worker.stop()
        self.leak.reset()
        self._backoff = 1.0
        if await self._start_worker():
            self._worker_event("restarted", {"reason": reason})
        self.manager.work.set()

    async def _withdraw_waiting(self) -> None:
        waiting = self.manager.handed()
        if not waiting:
            return
        try:
            self.worker.cancel([job.job_id for job in waiting])
        except WorkerCrashed:
            pass  # its batches come back through the crash path
        log.info("shutting down: %d job(s) waiting in the worker go back to the queue", len(waiting))
        await self.manager.requeue(waiting, "withdrawn from the worker at shutdown", count_attempt=False)

    async def cancel_running(self, job: Job, by: str) -> None:
        self.cancel_requested[job.job_id] = by
        try:
            self.worker.cancel([job.job_id])
        except WorkerCrashed:
            pass

    async def shutdown(self, grace: float) -> None:
        """Stop taking work; let the running batch finish within `grace` seconds, else put it back.
        The batch waiting behind it in the worker goes back to the queue at once: a drain never
        starts new work."""
        self.stopping = True
        self.manager.work.set()
        await self._withdraw_waiting()
        if self._inflight:
            log.info("waiting up to %.0f s for the running batch to finish", grace)
            _, pending = await asyncio.wait(self._inflight, timeout=grace)
            if pending:
                log.warning("running batch did not finish within %.0f s; putting it back in the queue", grace)
                self._abandon = True
                await self.worker.kill()
                await asyncio.gather(*pending, return_exceptions=True)
        if self.finishing:
            await asyncio.gather(*self.finishing, return_exceptions=True)
        await self.worker.stop()
