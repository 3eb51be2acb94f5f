"""Leases, the reaper and fencing: a box past its lease cannot write for a job any more."""

from __future__ import annotations

import asyncio

import pytest

from daemon.fleet.errors import StaleAttempt
from daemon.queue.jobs import FAILED, QUEUED, RUNNING, SUCCEEDED
from tests.fleet.conftest import QueueFactory, make_job


async def _expire(queue_lease: float) -> None:
    await asyncio.sleep(queue_lease + 0.2)


async def test_expired_lease_is_requeued_once_with_a_new_attempt(open_queue: QueueFactory) -> None:
    a, b = await open_queue("a", lease_seconds=0.5), await open_queue("b", lease_seconds=0.5)
    job = make_job()
    await a.submit(job)
    held = await a.claim("cpu0")
    assert held is not None and held.attempt == 1
    assert await a.reap() == []  # within its lease: left alone
    await _expire(0.5)
    first, second = await asyncio.gather(a.reap(), b.reap())  # two reapers at once: one reaps it
    reaped = first + second
    assert [(r.job_id, r.state, r.box, r.attempt) for r in reaped] == [(job.job_id, QUEUED, "a", 2)]
    assert await a.reap() == []  # idempotent
    again = await b.claim("cpu0")
    assert again is not None and (again.job_id, again.box, again.attempt, again.job.attempts) == (
        job.job_id, "b", 3, 2)


async def test_attempts_used_up_then_failed(open_queue: QueueFactory) -> None:
    queue = await open_queue(lease_seconds=0.3, max_attempts=2)
    job = make_job()
    await queue.submit(job)
    for _ in range(2):
        assert await queue.claim("cpu0") is not None
        await _expire(0.3)
        reaped = await queue.reap()
    assert [(r.state, r.attempt) for r in reaped] == [(FAILED, 4)]
    failed = await queue.get(job.job_id)
    assert failed is not None and failed.job.state == FAILED and failed.job.finished_at is not None
    assert "lease expired on box a, attempt 2 of 2" in (failed.job.error or "")
    assert await queue.claim("cpu0") is None


async def test_stale_box_cannot_finish_fail_requeue_or_progress(open_queue: QueueFactory) -> None:
    a, b = await open_queue("a", lease_seconds=0.5), await open_queue("b", lease_seconds=30)
    job = make_job()
    await a.submit(job)
    stale = await a.claim("cpu0")
    assert stale is not None
    await _expire(0.5)  # box a "paused" past its lease
    assert len(await b.reap()) == 1
    fresh = await b.claim("cpu1")
    assert fresh is not None and fresh.attempt == stale.attempt + 2
    for write in (lambda: a.finish(job.job_id, stale.attempt, SUCCEEDED, outputs=[{"index": 0}]),
                  lambda: a.finish(job.job_id, stale.attempt, FAILED, error="boom"),
                  lambda: a.requeue(job.job_id, stale.attempt),
                  lambda: a.progress(job.job_id, stale.attempt, 0.5),
                  lambda: a.renew(job.job_id, stale.attempt)):
        with pytest.raises(StaleAttempt) as refused:
            await write()
        assert (refused.value.job_id, refused.value.attempt, refused.value.current, refused.value.box) == (
            job.job_id, 1, 3, "b")
        assert f"job {job.job_id}: attempt 1 is stale, the current attempt is 3 (now running on box 'b')" \
            in str(refused.value)
    assert await a.renew_many([(job.job_id, stale.attempt)]) == [job.job_id]
    now = await b.get(job.job_id)
    assert now is not None and (now.job.state, now.box, now.job.progress) == (RUNNING, "b", 0.0)
    done = await b.finish(job.job_id, fresh.attempt, SUCCEEDED, outputs=[{"index": 0}])
    assert (done.job.state, done.box, done.job.outputs) == (SUCCEEDED, "b", [{"index": 0}])
    with pytest.raises(StaleAttempt, match="attempt 3 is no longer running"):
        await b.finish(job.job_id, fresh.attempt, SUCCEEDED)  # a finish is written once


async def test_renewed_lease_outlives_the_reaper(open_queue: QueueFactory) -> None:
    queue = await open_queue(lease_seconds=0.6)
    job = make_job()
    await queue.submit(job)
    held = await queue.claim("cpu0")
    assert held is not None and held.lease_until is not None
    for _ in range(4):  # 1.2 s in all, twice the lease, renewed each 0.3 s
        await asyncio.sleep(0.3)
        assert await queue.renew_many([(job.job_id, held.attempt)]) == []
        assert await queue.reap() == []
    later = await queue.renew(job.job_id, held.attempt)
    assert later > held.lease_until


async def test_requeue_gives_a_job_back_under_a_new_attempt(open_queue: QueueFactory) -> None:
    queue = await open_queue()
    job = make_job()
    await queue.submit(job)
    held = await queue.claim("cpu0")
    assert held is not None
    back = await queue.requeue(job.job_id, held.attempt, error="the daemon is stopping")
    assert (back.job.state, back.attempt, back.lease_until) == (QUEUED, 2, None)
    assert await queue.cancel_queued(job.job_id)
    assert not await queue.cancel_queued(job.job_id)
