"""Scheduling across several workers (issue 16 point 2), and the `[worker] devices` setting.

Pure parts: `pick_batch` with a worker's `can_run` and `holds` (model affinity bounded by the aging
step), and the device slots. Then the real queue, lanes and box against two fake worker supervisors
(tests/service/fakes.py), as test_core does for one: the most urgent job goes to the first free
worker, batches never span workers, a job that fits no device fails with each device's reason.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import pytest

from daemon import config as config_module
from daemon.auth import in_process_peer
from daemon.catalog import ModelCatalog
from daemon.crypto.keys import KeyStore
from daemon.dispatch import Box, Lane, OutputWriter
from daemon.events import EventBus
from daemon.outputs.pipeline import OutputSettings
from daemon.outputs.sink import ProtectedSink
from daemon.queue import scheduler
from daemon.queue.admission import Admission
from daemon.queue.manager import QueueManager
from daemon.queue.store import JobStore
from daemon.worker.devices import resolve
from daemon.worker.memory_model import AnyDevice, MemoryModel
from tests.service.fakes import FakeWorkerSupervisor
from tests.service.test_core import Recorded, until
from tests.service.test_units import make_job

AGING = 300.0
POLICY = scheduler.Policy(aging_seconds=AGING, max_batch=4)


def on_model(seq: int, model: str, priority: int = 1, enqueued_at: float = 0.0, steps: int = 4):
    job = make_job(seq, priority, enqueued_at)
    job.model_id = model
    job.params["steps"] = steps
    return job


def test_a_free_worker_prefers_a_model_it_holds_among_equally_urgent_jobs():
    jobs = [on_model(1, "a"), on_model(2, "b"), on_model(3, "b")]
    batch = scheduler.pick_batch(jobs, now=10.0, policy=POLICY, holds=lambda job: job.model_id == "b")
    assert [job.job_id for job in batch] == ["j2", "j3"]
    assert [j.job_id for j in scheduler.pick_batch(jobs, now=10.0, policy=POLICY)] == ["j1"]  # no affinity: FIFO


def test_affinity_never_passes_a_more_urgent_job_nor_one_that_waited_an_aging_step():
    urgent = [on_model(1, "a", priority=2), on_model(2, "b", priority=1)]
    assert [j.job_id for j in scheduler.pick_batch(urgent, 10.0, POLICY, holds=lambda j: j.model_id == "b")] == ["j1"]
    waited = [on_model(1, "a", enqueued_at=0.0), on_model(2, "b", enqueued_at=AGING)]
    now = AGING + 1.0  # j1 has waited one aging step (and is lifted a level): it goes first
    assert [j.job_id for j in scheduler.pick_batch(waited, now, POLICY, holds=lambda j: j.model_id == "b")] == ["j1"]


def test_a_worker_skips_the_jobs_it_cannot_run_and_leaves_them_for_another():
    jobs = [on_model(1, "big", priority=3), on_model(2, "small")]
    batch = scheduler.pick_batch(jobs, 10.0, POLICY, can_run=lambda job: job.model_id != "big")
    assert [job.job_id for job in batch] == ["j2"]


def test_devices_give_each_worker_its_gpu_and_split_the_cpu_threads():
    slots = resolve(["cuda:0", "cuda:2"], "auto", 0, gpus_seen=4, environ={"CUDA_VISIBLE_DEVICES": "4,5,6,7"})
    assert [(s.name, s.device, s.label, s.env["CUDA_VISIBLE_DEVICES"]) for s in slots] == [
        ("cuda0", "cuda", "cuda:0", "4"), ("cuda2", "cuda", "cuda:2", "6")]
    assert {s.env["CUDA_DEVICE_ORDER"] for s in slots} == {"PCI_BUS_ID"}  # the indices NVML (and status) use
    cpus = resolve(["cpu", "cpu"], "auto", 4, gpus_seen=0, environ={})
    assert [(s.name, s.threads, s.env["CUDA_VISIBLE_DEVICES"]) for s in cpus] == [("cpu0", 2, ""), ("cpu1", 2, "")]
    assert [s.threads for s in resolve(["cpu", "cpu"], "auto", 0, 0, environ={}, cores=8)] == [4, 4]
    assert [(s.name, s.device) for s in resolve("auto", "auto", 0, gpus_seen=2, environ={})] == [
        ("cuda0", "cuda"), ("cuda1", "cuda")]
    assert [(s.name, s.device) for s in resolve("auto", "cpu", 0, gpus_seen=2, environ={})] == [("cpu0", "cpu")]
    [alone] = resolve("auto", "auto", 0, gpus_seen=0, environ={})
    assert (alone.name, alone.device, alone.threads, alone.env) == ("cpu0", "auto", 0, {})  # as before: one worker


@pytest.mark.parametrize(("value", "reason"), [
    (["gpu"], "'gpu' is not a device"), (["cuda:1", "cuda:1"], "cuda:1 is listed twice"),
    ([], "non-empty list"), (3, "must be"), ("cuda:x", "is not a device")])
def test_a_bad_devices_setting_stops_start_up_naming_the_key(value, reason):
    with pytest.raises(config_module.ConfigError) as error:
        config_module.defaults().replace(worker__devices=value)
    assert error.value.key == "worker.devices" and reason in error.value.reason


def test_devices_can_come_from_the_environment(tmp_path):
    cfg = config_module.load(None, environ={"SAI_WORKER_DEVICES": '["cpu", "cpu"]'}, system_file=None)
    assert cfg.worker.devices == '["cpu", "cpu"]'
    assert [s.name for s in resolve(cfg.worker.devices, "auto", 0, 0, environ={})] == ["cpu0", "cpu1"]
    assert [s.label for s in resolve("cuda:1,cpu", "auto", 0, 0, environ={})] == ["cuda:1", "cpu"]


@dataclass
class TwoLanes:
    queue: QueueManager
    box: Box
    workers: list[FakeWorkerSupervisor]
    memories: list[MemoryModel]

    async def submit(self, prompt: str, **params: object) -> str:
        reply = await self.queue.submit(in_process_peer(), None, **{
            "prompt": prompt, "negative_prompt": "", "width": 64, "height": 64, "steps": 3, "guidance": None,
            "seed": None, "priority": None, "count": None, "reproducible": False, **params})
        return str(reply["job_id"])


@pytest.fixture
async def two(tmp_path: Path) -> AsyncIterator[TwoLanes]:
    cfg = config_module.load(system_file=None, environ={}).replace(queue__max_batch=4)
    recorded, bus = Recorded(), EventBus()
    workers = [FakeWorkerSupervisor("cpu0"), FakeWorkerSupervisor("cpu1")]
    memories = [MemoryModel(), MemoryModel()]
    store = await JobStore.open(tmp_path / "jobs.sqlite3")
    models = ModelCatalog(cfg, tmp_path, record=recorded.record, publish=bus.publish)
    queue = QueueManager(store, Admission(cfg), bus, cfg, audit=recorded.record,
                         memory=AnyDevice([(w.name, m, w.capacity) for w, m in zip(workers, memories)]),
                         capacity=lambda: None, models=models, prompt_digest=lambda prompt, negative: {})
    await queue.recover()
    (tmp_path / "outputs").mkdir()
    sink = ProtectedSink(KeyStore.open(tmp_path / "keys"), OutputSettings.from_config(cfg), tmp_path / "outputs")
    executor = ThreadPoolExecutor(2)
    writer = OutputWriter(queue, sink, executor, audit=recorded.record, outputs_blocked=lambda message: None)
    lanes: list[Lane] = []
    lanes += [Lane(queue, w, writer, cfg.worker, max_batch=4, memory=m, models=models, worker_events=recorded,
                   batch_figures=recorded.batch_figures, watch_work=lambda task, name, duty, holds_jobs: None,
                   only_lane=lambda: not any(lane.can_take_work for lane in lanes))
              for w, m in zip(workers, memories)]
    box = Box(queue, lanes, worker_events=recorded)
    await box.warm_up()
    run = asyncio.create_task(box.run())
    yield TwoLanes(queue, box, workers, memories)
    box.stopping = True
    queue.work.set()
    for worker in workers:
        for batch in worker.batches:
            batch.go.set()
    await asyncio.wait_for(run, 10)
    for lane in lanes:
        await asyncio.gather(*lane.finishing, return_exceptions=True)
    executor.shutdown(wait=True)
    await store.close()


async def test_the_most_urgent_job_starts_on_the_first_free_worker_and_batches_stay_on_one(two: TwoLanes):
    await two.queue.set_paused(None, True)
    low = await two.submit("low", priority="low", steps=7)
    same = [await two.submit(f"same {i}") for i in range(2)]
    other = await two.submit("other shape", steps=5)
    critical = await two.submit("critical", priority="critical", steps=6)
    await two.queue.set_paused(None, False)
    first = await until(lambda: two.workers[0].batches)
    assert first[0].job_ids == [critical]  # the most urgent job, on the first free worker
    second = await until(lambda: two.workers[1].batches)
    assert second[0].job_ids == same  # the next, batched with its same-shape job, on the other
    await until(lambda: sum(len(w.batches) for w in two.workers) == 4)  # each worker: running + next
    handed = [job for w in two.workers for batch in w.batches for job in batch.job_ids]
    assert sorted(handed) == sorted([critical, *same, other, low])  # each job on exactly one worker
    for worker in two.workers:
        for batch in worker.batches:
            assert {(await two.queue.get(job_id)).worker for job_id in batch.job_ids} == {worker.name}
            batch.go.set()
    for job_id in (low, *same, other, critical):
        await until(lambda job_id=job_id: two.queue.active.get(job_id) is None)


async def test_a_job_that_fits_no_device_fails_naming_each_devices_reason(two: TwoLanes):
    await two.queue.set_paused(None, True)
    job_id = await two.submit("too large", width=512, height=512)
    for worker, memory in zip(two.workers, two.memories):
        worker.capacity = lambda: 2**30  # type: ignore[method-assign]
        memory.observe({"bytes_per_image": 2**31, "pixels": 512 * 512})  # measured later: it never fits
    job = await two.queue.get(job_id)
    await two.queue.set_paused(None, False)
    await until(lambda: job.state == "failed")
    assert job.state == "failed" and job.error.startswith("fits no device: cpu0: a 512x512 image needs")
    assert "; cpu1: " in job.error
    assert not any(w.batches for w in two.workers)
