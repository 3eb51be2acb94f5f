"""Claims on the fleet queue: exactly once under concurrency, in urgency order, by model."""

from __future__ import annotations

import asyncio
import collections
import time

from daemon.fleet.jobs import FleetQueue
from daemon.queue.jobs import SUCCEEDED
from tests.fleet.conftest import QueueFactory, make_job


async def test_concurrent_boxes_claim_each_job_exactly_once(open_queue: QueueFactory) -> None:
    boxes = [await open_queue(name) for name in ("a", "b", "c")]
    jobs = [make_job(f"job {i}") for i in range(90)]
    started = time.perf_counter()
    await asyncio.gather(*(boxes[i % 3].submit(job) for i, job in enumerate(jobs)))
    submit_seconds = time.perf_counter() - started
    claims: list[tuple[str, str, str]] = []

    async def worker(queue: FleetQueue, name: str) -> None:
        while (held := await queue.claim(name)) is not None:
            claims.append((held.job_id, queue.box, name))
            await asyncio.sleep(0)  # let the other claimers in between
            await queue.finish(held.job_id, held.attempt, SUCCEEDED, outputs=[{"index": 0}])

    await asyncio.gather(*(worker(box, f"cpu{w}") for box in boxes for w in range(3)))
    claimed = collections.Counter(job_id for job_id, _, _ in claims)
    assert sorted(claimed) == sorted(job.job_id for job in jobs)
    assert set(claimed.values()) == {1}, [job_id for job_id, n in claimed.items() if n > 1]
    assert await boxes[0].counts() == {"succeeded": 90}
    per_box = collections.Counter(box for _, box, _ in claims)
    assert len(per_box) >= 2, per_box  # nine claimers on three pools: no single one takes everything
    print(f"\n90 submits from 3 boxes: {90 / submit_seconds:.0f}/s; claims per box {dict(per_box)}")


async def test_priority_then_submission_order_with_aging(open_queue: QueueFactory) -> None:
    queue = await open_queue(aging_seconds=100.0)
    normal = make_job("normal")
    high = make_job("high", priority="high")
    low_old = make_job("low, waited 250 s: two levels up, as high as `high`, and older", priority="low",
                       waited=250)
    low = make_job("low", priority="low")
    critical = make_job("critical", priority="critical")
    for job in (normal, high, low_old, low, critical):
        await queue.submit(job)
    order = []
    while (held := await queue.claim("cpu0")) is not None:
        order.append(held.job_id)
    assert order == [critical.job_id, high.job_id, low_old.job_id, normal.job_id, low.job_id]


async def test_only_models_the_worker_can_run_and_held_models_first(open_queue: QueueFactory) -> None:
    queue = await open_queue()
    big, tiny_a, tiny_b = make_job(model="big"), make_job(model="tiny"), make_job(model="tiny")
    other = make_job(model="other")
    for job in (big, tiny_a, other, tiny_b):
        await queue.submit(job)
    first = await queue.claim("cpu0", models=["tiny", "other"], held=["other"])
    assert first is not None and first.job_id == other.job_id  # same urgency: its model is loaded
    rest = [await queue.claim("cpu0", models=["tiny", "other"]) for _ in range(3)]
    assert [held.job_id if held else None for held in rest] == [tiny_a.job_id, tiny_b.job_id, None]
    left = await queue.claim("cuda0", models=["big"])
    assert left is not None and left.job_id == big.job_id and left.box == "a" and left.job.worker == "cuda0"


async def test_claim_sets_box_worker_lease_and_attempt(open_queue: QueueFactory) -> None:
    queue = await open_queue("box-1", lease_seconds=45)
    await queue.submit(make_job())
    held = await queue.claim("cpu0", device="cpu")
    assert held is not None
    assert (held.box, held.job.worker, held.job.device, held.attempt, held.job.attempts) == (
        "box-1", "cpu0", "cpu", 1, 1)
    assert held.lease_until is not None and held.job.started_at is not None
    assert 40 < held.lease_until - held.job.started_at <= 45.5
    assert held.to_api(show_prompt=False)["box"] == "box-1"


async def test_client_token_is_idempotent_across_boxes(open_queue: QueueFactory) -> None:
    a, b = await open_queue("a"), await open_queue("b")
    results = await asyncio.gather(*(queue.submit(make_job(token="t-1")) for queue in (a, b, a, b)))
    ids = {held.job_id for held, _ in results}
    assert len(ids) == 1 and sorted(duplicate for _, duplicate in results) == [False, True, True, True]
    other_user, duplicate = await a.submit(make_job(token="t-1", user="bob", uid=1001))  # tokens are per user
    assert not duplicate and other_user.job_id not in ids
    same_user, duplicate = await b.submit(make_job(token="t-1", uid=2042))  # alice, another uid on another machine
    assert duplicate and same_user.job_id in ids
    assert (await a.counts()) == {"queued": 2}


async def test_batch_claims_jobs_of_the_head_shape_up_to_the_image_limit(open_queue: QueueFactory) -> None:
    queue = await open_queue()
    same = [make_job(f"same {i}") for i in range(5)]
    other_size = make_job("128 wide")
    other_size.params["width"] = 128
    reproducible = make_job("reproducible")
    reproducible.params["reproducible"] = True
    two = make_job("two images")
    two.params["count"] = 2
    for job in (same[0], other_size, reproducible, same[1], two, *same[2:]):
        await queue.submit(job)
    batch = await queue.claim_batch("cpu0", 4)
    # same[0] heads; other_size and reproducible cannot join; two (2 images) fits after same[1]; 4 images
    assert [held.job_id for held in batch] == [same[0].job_id, same[1].job_id, two.job_id]
    assert {(held.box, held.job.worker, held.attempt, held.job.state) for held in batch} == {("a", "cpu0", 1, "running")}
    second = await queue.claim_batch("cpu0", 4)
    assert [held.job_id for held in second] == [other_size.job_id]  # the head now: nothing of its shape
    alone = await queue.claim_batch("cpu0", 4)
    assert [held.job_id for held in alone] == [reproducible.job_id]
    rest = await queue.claim_batch("cpu0", 4)
    assert [held.job_id for held in rest] == [job.job_id for job in same[2:]]
    assert await queue.claim_batch("cpu0", 4) == []


async def test_concurrent_batch_claims_take_each_job_once(open_queue: QueueFactory) -> None:
    boxes = [await open_queue(name) for name in ("a", "b", "c")]
    jobs = [make_job(f"job {i}") for i in range(60)]
    for i, job in enumerate(jobs):
        await boxes[i % 3].submit(job)
    claimed: list[str] = []

    async def worker(queue: FleetQueue) -> None:
        while batch := await queue.claim_batch("cpu0", 4):
            claimed.extend(held.job_id for held in batch)
            await asyncio.sleep(0)
            for held in batch:
                await queue.finish(held.job_id, held.attempt, SUCCEEDED)

    await asyncio.gather(*(worker(box) for box in boxes for _ in range(2)))
    assert sorted(claimed) == sorted(job.job_id for job in jobs)
