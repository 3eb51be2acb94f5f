"""The queue and the dispatcher in one process, against a fake worker supervisor (tests/service/fakes.py):
real SQLite job store, real event bus, real memory model and real output sink, so the scheduling rules
are tested step by step without a worker process. The same rules are tested end to end through the
real `sai daemon` in test_generation, test_next_batch and test_lifecycle."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from daemon import config as config_module
from daemon.auth import in_process_peer
from daemon.catalog import ModelCatalog
from daemon.crypto.keys import KeyStore
from daemon.dispatch import Box, Lane, OutputWriter
from daemon.events import EventBus
from daemon.outputs.pipeline import OutputSettings
from daemon.outputs.sink import ProtectedSink
from daemon.queue.admission import Admission
from daemon.queue.jobs import Job
from daemon.queue.manager import PROGRESS_EVERY, QueueManager
from daemon.queue.store import JobStore
from daemon.worker.memory_model import MemoryModel
from tests.service.fakes import FakeBatch, FakeWorkerSupervisor


class Recorded:
    """The collaborators' calls, as the parts are given them (audit, worker events, figures)."""

    def __init__(self) -> None:
        self.audit: list[tuple[str, str]] = []
        self.worker_events: list[str] = []

    async def record(self, peer: Any, action: str, subject: str, details: dict[str, Any]) -> None:
        self.audit.append((action, subject))

    def worker_event(self, kind: str, data: dict[str, Any], worker: dict[str, Any]) -> None:
        self.worker_events.append(kind)

    async def batch_figures(self, jobs: list[Job], figures: dict[str, Any]) -> None:
        pass


@dataclass
class Core:
    queue: QueueManager
    dispatcher: Box
    worker: FakeWorkerSupervisor
    recorded: Recorded
    run: asyncio.Task[None]

    async def submit(self, prompt: str, **params: Any) -> str:
        reply = await self.queue.submit(in_process_peer(), None, **{
            "prompt": prompt, "negative_prompt": "", "width": 64, "height": 64, "steps": 3, "guidance": None,
            "seed": None, "priority": None, "count": None, "reproducible": False, **params})
        return str(reply["job_id"])

    async def handed(self, count: int) -> list[FakeBatch]:
        """Until the worker has been handed `count` batches."""
        return await until(lambda: self.worker.batches if len(self.worker.batches) >= count else None)

    async def state(self, job_id: str) -> str:
        return (await self.queue.get(job_id)).state

    async def finished(self, *job_ids: str, timeout: float = 10.0) -> list[str]:
        """Until each job is finished as stored (its state event comes after the commit), then their states."""
        deadline = asyncio.get_running_loop().time() + timeout
        while True:
            states = [await self.state(job_id) for job_id in job_ids]
            if all(state in ("succeeded", "failed", "cancelled") for state in states):
                return states
            assert asyncio.get_running_loop().time() < deadline, f"timed out: {states}"
            await asyncio.sleep(0.01)


async def until(value: Callable[[], Any], timeout: float = 10.0) -> Any:
    deadline = asyncio.get_running_loop().time() + timeout
    while not (found := value()):
        assert asyncio.get_running_loop().time() < deadline, "timed out"
        await asyncio.sleep(0.01)
    return found


@pytest.fixture
async def core(tmp_path: Path) -> AsyncIterator[Core]:
    cfg = config_module.load(system_file=None, environ={}).replace(queue__max_batch=2)
    recorded, bus, memory, worker = Recorded(), EventBus(), MemoryModel(), FakeWorkerSupervisor()
    store = await JobStore.open(tmp_path / "jobs.sqlite3")
    models = ModelCatalog(cfg, tmp_path, record=recorded.record, publish=bus.publish)
    queue = QueueManager(store, Admission(cfg), bus, cfg, audit=recorded.record, memory=memory,
                         capacity=worker.capacity, models=models, prompt_digest=lambda prompt, negative: {})
    await queue.recover()
    outputs = tmp_path / "outputs"
    outputs.mkdir()
    sink = ProtectedSink(KeyStore.open(tmp_path / "keys"), OutputSettings.from_config(cfg), outputs)
    executor = ThreadPoolExecutor(2)
    writer = OutputWriter(queue, sink, executor, audit=recorded.record, outputs_blocked=lambda message: None)
    lane = Lane(queue, worker, writer, cfg.worker, max_batch=cfg.queue.max_batch, memory=memory, models=models,
                worker_events=recorded, batch_figures=recorded.batch_figures,
                watch_work=lambda task, name, duty, holds_jobs: None, only_lane=lambda: True)
    dispatcher = Box(queue, [lane], worker_events=recorded)
    run = asyncio.create_task(dispatcher.run())
    yield Core(queue, dispatcher, worker, recorded, run)
    dispatcher.stopping = True
    queue.work.set()
    for batch in worker.batches:
        batch.go.set()
    await asyncio.wait_for(run, 10)
    await asyncio.gather(*lane.finishing, return_exceptions=True)
    executor.shutdown(wait=True)
    await store.close()


async def test_the_most_urgent_job_starts_first_and_same_shape_jobs_share_a_batch(core: Core) -> None:
    await core.queue.set_paused(None, True)
    low = await core.submit("low", priority="low")
    normal = [await core.submit(f"normal {n}") for n in range(2)]
    other_shape = await core.submit("bigger", width=128, height=128)
    critical = await core.submit("critical", priority="critical")
    await core.queue.set_paused(None, False)
    first, second = await core.handed(2)
    # The head of the queue, filled up to max_batch (2) with the next jobs of its shape in start order.
    assert first.job_ids == [critical, normal[0]]
    assert second.job_ids == [normal[1], low]
    first.go.set()
    second.go.set()
    third = (await core.handed(3))[2]
    assert third.job_ids == [other_shape]
    third.go.set()
    assert await core.finished(critical, *normal, other_shape, low) == ["succeeded"] * 5


async def test_a_batch_behind_the_running_one_is_next_and_starts_only_when_begun(core: Core) -> None:
    running = await core.submit("running", width=64)
    waiting = await core.submit("waiting", width=128, height=128)
    first, second = await core.handed(2)
    first.go.set()
    await first.began.wait()
    job = await core.queue.get(waiting)
    assert (job.state, job.handed, job.attempts) == ("queued", True, 0)
    assert core.queue.status() == {"paused": False, "queued": 1, "next": 1, "running": 1}
    assert core.queue.position(job) == 1
    second.go.set()
    assert await core.finished(waiting) == ["succeeded"]
    done = await core.queue.get(waiting)
    assert (done.state, done.attempts) == ("succeeded", 1) and done.started_at is not None
    assert await core.finished(running) == ["succeeded"]  # its outputs are written in a thread: it may record second


async def test_a_crash_requeues_the_batch_and_only_begun_jobs_count_an_attempt(core: Core) -> None:
    begun = await core.submit("begun")
    waiting = await core.submit("waiting", width=128, height=128)
    first, second = await core.handed(2)
    first.crash = "worker process was killed by SIGKILL"
    first.go.set()
    await until(lambda: core.recorded.worker_events.count("crashed") >= 1 or None)
    crashed = await core.queue.get(begun)
    assert crashed.state == "queued" and crashed.attempts == 0  # the fake crashed before its first step
    assert not second.began.is_set() and (await core.queue.get(waiting)).state == "queued"
    again = (await core.handed(3))[2:]  # the worker restarted (after its back-off) and takes them again
    for batch in again:
        batch.go.set()
    if len(again) == 1:
        (await core.handed(4))[3].go.set()
    assert await core.finished(begun, waiting) == ["succeeded", "succeeded"]
    assert ("job.finish", begun) in core.recorded.audit


async def test_cancelling_a_running_job_stops_it_and_a_next_one_never_runs(core: Core) -> None:
    running = await core.submit("running", steps=50)
    waiting = await core.submit("waiting", width=128, height=128)
    first, second = await core.handed(2)
    def stop_in_worker(job: Job) -> Any:
        return core.dispatcher.cancel_running(job, "test")

    assert (await core.queue.cancel(in_process_peer(), waiting, stop_in_worker))["state"] == "cancelled"
    await core.queue.cancel(in_process_peer(), running, stop_in_worker)
    assert {running, waiting} <= core.worker.cancelled
    first.go.set()
    second.go.set()
    assert await core.finished(running, waiting) == ["cancelled", "cancelled"]
    assert not second.began.is_set()


async def test_shutdown_finishes_the_running_batch_and_withdraws_the_waiting_one(core: Core) -> None:
    running = await core.submit("running")
    waiting = await core.submit("waiting", width=128, height=128)
    first, second = await core.handed(2)
    first.go.set()
    await first.began.wait()
    stopping = asyncio.create_task(core.dispatcher.shutdown(grace=10))
    await until(lambda: not core.queue.active[waiting].handed)
    second.go.set()
    await stopping
    assert await core.finished(running) == ["succeeded"]
    withdrawn = await core.queue.get(waiting)
    assert (withdrawn.state, withdrawn.attempts, withdrawn.started_at) == ("queued", 0, None)
    assert not second.began.is_set()


async def test_progress_events_come_at_the_first_and_last_step_and_at_most_every_tenth_of_a_second(
        core: Core) -> None:
    feed = core.queue.bus.subscribe({"job"})
    job_id = await core.submit("many steps", steps=50)
    (batch,) = await core.handed(1)
    started = time.monotonic()
    batch.go.set()
    assert await core.finished(job_id) == ["succeeded"]
    elapsed = time.monotonic() - started
    steps = []
    while not feed.queue.empty():
        event = feed.queue.get_nowait()
        if event is not None and event[1]["kind"] == "progress" and event[1]["job_id"] == job_id:
            steps.append(event[1]["step"])
    assert steps[0] == 1 and steps[-1] == 50 and steps == sorted(set(steps))
    assert len(steps) <= 2 + elapsed / PROGRESS_EVERY, (steps, elapsed)
    assert (await core.queue.get(job_id)).progress == 1.0
