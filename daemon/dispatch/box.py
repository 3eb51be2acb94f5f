"""The box: every worker's lane, fed from the one queue.

One scheduling loop wakes on any change (a submit, a finished batch, a worker ready) and hands
batches to the lanes with room: idle lanes first (in configured order), then lanes that can take
the next batch behind their running one. Each lane gets the most urgent job it can run (priority
order across the box), preferring, among jobs of equal urgency, one for a model it holds already
(bounded by the aging step: daemon.queue.scheduler.pick_batch). When several lanes are idle a
batch takes no more than its share of the queued images, so they work side by side. A job whose
model or size fits no device fails with the reasons. Batches never span lanes.
"""

from __future__ import annotations

import asyncio
import logging
import math
from typing import Any

from daemon.dispatch.lane import FitKey, Lane, WorkerEvents, fit_key, once_per_fit
from daemon.protocol import echo, invalid_params
from daemon.queue.jobs import FAILED, Job
from daemon.queue.manager import QueueManager

log = logging.getLogger("sai.dispatch")


class Box:
    def __init__(self, manager: QueueManager, lanes: list[Lane], *, worker_events: WorkerEvents) -> None:
        """`worker_events` hears `model_fit` when a model fits no device (its jobs fail; an alert)."""
        self.manager = manager
        self._worker_events = worker_events
        self.lanes = lanes
        self.by_name = {lane.name: lane for lane in lanes}
        self.stopping = False

    async def run(self) -> None:
        work = self.manager.work
        while not self.stopping:
            await work.wait()
            work.clear()
            if self.stopping:
                break
            queued = bool(self.manager.queued()) and not self.manager.paused
            for lane in self.lanes:
                lane.maintain(queued)
            if not queued:
                continue
            await self._fail_unrunnable()
            self._assign()

    def _assign(self) -> None:
        """Hand out batches until no lane with room finds one it can run."""
        while True:
            free = [lane for lane in self.lanes if lane.free_slots() > 0]
            if not free or self.manager.paused:
                return
            idle = [lane for lane in free if not lane.inflight]
            share = None
            if len(idle) > 1:
                images = sum(job.count for job in self.manager.queued())
                share = max(1, math.ceil(images / len(idle)))
            took = False
            for lane in sorted(free, key=lambda lane: (len(lane.inflight), self.lanes.index(lane))):
                batch = self.manager.next_batch(share if not lane.inflight else None,
                                                can_run=once_per_fit(lane.can_run), holds=lane.holds)
                if batch:
                    lane.launch(batch)
                    took = True
                    break
            if not took:
                return

    async def _fail_unrunnable(self) -> None:
        """Fail the queued jobs no lane that can still work could ever run, naming each device's reason.
        It runs at every wake-up, so lanes are asked once per model and size, not once per queued job."""
        lanes = [lane for lane in self.lanes if lane.can_take_work]
        if not lanes:
            return
        verdicts: dict[FitKey, tuple[str, bool] | None] = {}
        doomed: list[tuple[Job, str, bool]] = []
        for job in self.manager.queued():
            key = fit_key(job)
            if key not in verdicts:
                verdicts[key] = self._unrunnable(job, lanes)
            if (verdict := verdicts[key]) is not None:
                doomed.append((job, *verdict))
        for job, why, model_too_large in doomed:
            log.error("job %s: %s", job.job_id, why)
            await self.manager.finish([job], FAILED, why)
            if model_too_large:  # the model, not the job: operators must hear of it
                self._worker_events.worker_event("model_fit", {"error": why, "model": job.model_id}, {})

    @staticmethod
    def _unrunnable(job: Job, lanes: list[Lane]) -> tuple[str, bool] | None:
        """(why no lane can run `job`, whether its model is what fits nowhere), or None if one can."""
        reasons = [(lane.name, lane.misfit(job)) for lane in lanes]
        if not all(reason for _, reason in reasons):
            return None
        why = "; ".join(f"{name}: {reason}" for name, reason in reasons)
        return (f"fits no device: {why}" if len(lanes) > 1 else str(reasons[0][1]),
                all(lane.model_misfit(job) for lane in lanes))

    async def warm_up(self) -> None:
        """Start every worker (each loads the default model) so the first jobs do not wait for it."""
        await asyncio.gather(*(lane.start_worker() for lane in self.lanes))
        self.manager.work.set()

    def lane(self, name: str) -> Lane:
        """The lane of worker `name`; -32602 naming `worker` and the workers there are."""
        lane = self.by_name.get(name)
        if lane is None:
            raise invalid_params("worker", f"no worker {echo(name)!r}; workers: {', '.join(self.by_name)}")
        return lane

    def request_restart(self, reason: str, name: str | None = None) -> dict[str, Any]:
        """Restart one worker (`name`) or all of them, each once its current batch is done."""
        lanes = [self.lane(name)] if name is not None else self.lanes
        replies = [lane.request_restart(reason) for lane in lanes]
        return {"restarting": True, "after_batch": any(r["after_batch"] for r in replies), "reason": reason,
                "workers": [r["worker"] for r in replies]}

    def workers(self) -> list[dict[str, Any]]:
        return [lane.view() for lane in self.lanes]

    def worker_view(self) -> dict[str, Any]:
        """The first worker, as `daemon.status`'s `worker` shows it (kept for clients of one worker)."""
        return self.lanes[0].view()

    async def cancel_running(self, job: Job, by: str) -> None:
        lanes = [self.by_name[job.worker]] if job.worker in self.by_name else self.lanes
        for lane in lanes:
            lane.cancel_running(job, by)

    def heartbeat_problem(self, silence: float, stall: float) -> str | None:
        for lane in self.lanes:
            problem = lane.worker.heartbeat_problem(silence=silence, stall=stall)
            if problem:
                return problem
        return None

    def describe(self) -> str:
        """The workers' states for systemd's STATUS= line: `worker ready`, or `workers cpu0 ready, cpu1 busy`."""
        if len(self.lanes) == 1:
            return f"worker {self.lanes[0].worker.state}"
        return "workers " + ", ".join(f"{lane.name} {lane.worker.state}" for lane in self.lanes)

    async def shutdown(self, grace: float) -> None:
        """Stop taking work; every lane drains its running batch within `grace` (side by side)."""
        self.stopping = True
        for lane in self.lanes:
            lane.stopping = True
        self.manager.work.set()
        await asyncio.gather(*(lane.shutdown(grace) for lane in self.lanes))
