"""Cancelling a job another box runs: the request waits in PostgreSQL for the attempt running now,
the running box reads it with its next lease renewal and cancels as a local job.cancel does; a
run given back (its box stopping) or reaped (its box died) before it acted on the request ends
cancelled: a user's cancel is never lost to a re-run."""

from __future__ import annotations

import asyncio
from typing import Any

from daemon.queue.jobs import CANCELLED, QUEUED
from tests.conftest import DaemonFactory, wait_job
from tests.fleet.conftest import QueueFactory, make_job, member_config
from tests.fleet.test_shared_queue import SLOW, _rows, _until
from tests.harness import merged


async def test_a_request_reaches_only_the_attempt_it_was_made_for(open_queue: QueueFactory) -> None:
    a, b = await open_queue("a"), await open_queue("b")
    job = make_job()
    await a.submit(job)
    first = await b.claim("cpu0")
    assert first is not None and first.attempt == 1
    assert await b.renew_held([(job.job_id, 1)]) == ([], {})  # nothing asked yet
    assert await a.request_cancel(job.job_id, 1, "alice on box a")
    assert await b.renew_held([(job.job_id, 1)]) == ([], {job.job_id: "alice on box a"})
    assert await b.renew_held([(job.job_id, 1)]) == ([], {job.job_id: "alice on box a"})  # until it ends
    assert not await a.request_cancel(job.job_id, 2, "alice on box a")  # an attempt that is not running


async def test_a_run_given_back_before_it_heard_the_cancel_ends_cancelled(open_queue: QueueFactory) -> None:
    a, b = await open_queue("a"), await open_queue("b")
    job = make_job()
    await a.submit(job)
    assert await b.claim("cpu0") is not None
    assert await a.request_cancel(job.job_id, 1, "alice on box a")
    back = await b.requeue(job.job_id, 1, error="box b stopping")  # b stops before it acted on the request
    assert (back.job.state, back.job.error) == (CANCELLED, "cancelled by alice on box a while running")
    assert back.job.finished_at is not None
    assert await a.claim("cpu0") is None  # the user's cancel is not lost: nobody runs it again


async def test_a_run_whose_box_died_before_it_heard_the_cancel_ends_cancelled(open_queue: QueueFactory) -> None:
    a, b = await open_queue("a", lease_seconds=0.5), await open_queue("b", lease_seconds=0.5)
    asked, other = make_job("asked"), make_job("not asked")
    for job in (asked, other):
        await a.submit(job)
    assert await b.claim("cpu0") is not None and await b.claim("cpu1") is not None
    assert await a.request_cancel(asked.job_id, 1, "alice on box a")
    await asyncio.sleep(0.7)  # box b died: its leases expire
    reaped = {r.job_id: r.state for r in await a.reap()}
    assert reaped == {asked.job_id: CANCELLED, other.job_id: QUEUED}
    ended = await a.get(asked.job_id)
    assert ended is not None and ended.job.state == CANCELLED
    assert ended.job.error is not None and ended.job.error.startswith("cancelled by alice on box a while running")
    again = await a.claim("cpu0")
    assert again is not None and again.job_id == other.job_id and await a.claim("cpu1") is None


def _box(url: str, name: str, key: str) -> dict[str, dict[str, Any]]:
    return merged(member_config(url, name, key, heartbeat_seconds=0.5),
                  {"worker": {"pipeline_wrapper": SLOW}})


async def test_cancel_on_one_box_stops_the_job_running_on_another(
        make_daemon: DaemonFactory, client_of: Any, fleet_url: str, prompt_key_file: str) -> None:
    a = make_daemon(_box(fleet_url, "box-a", prompt_key_file))
    b = make_daemon(_box(fleet_url, "box-b", prompt_key_file))
    client_a, client_b = await client_of(a), await client_of(b)
    await client_a.call("queue.pause")  # box-b runs it
    job_id = (await client_a.call("job.submit", prompt="slow lantern", steps=30))["job_id"]

    async def running_on_b() -> bool:
        job = await client_a.call("job.get", job_id=job_id)
        return bool(job["state"] == "running" and job["box"] == "box-b")

    await _until("box-b runs the job", running_on_b)

    async def busy_b() -> bool:  # its one worker runs the job: none free (sai fleet, the console's fleet pane)
        boxes = {box["name"]: box for box in (await client_a.call("fleet.status"))["boxes"]}
        return bool(boxes["box-b"]["free_workers"] == 0 and boxes["box-a"]["free_workers"] == 1)

    await _until("box-b's worker is shown busy", busy_b, timeout=10)
    reply = await client_a.call("job.cancel", job_id=job_id)
    assert reply == {"job_id": job_id, "state": "cancelling"}
    seen_a = await wait_job(client_a, job_id, timeout=30)  # 3 s of slow start, then the first step
    seen_b = await client_b.call("job.get", job_id=job_id)
    for seen in (seen_a, seen_b):
        assert (seen["state"], seen["box"], seen["outputs"]) == ("cancelled", "box-b", []), seen
        assert seen["error"] == "cancelled by " + seen["user"] + " on box box-a while running"
    row = (await _rows(fleet_url))[job_id]
    assert (row["state"], row["attempt"], row["outputs"]) == ("cancelled", 1, "[]")

    cancels = [e for e in (await client_a.call("audit.tail", limit=50))["entries"]
               if e["action"] == "job.cancel" and e["subject"] == job_id]
    assert len(cancels) == 1 and cancels[0]["details"] == {"state": "running", "box": "box-b", "attempt": 1}
    finishes = [e for e in (await client_b.call("audit.tail", limit=50))["entries"]
                if e["action"] == "job.finish" and e["subject"] == job_id]
    assert [e["details"]["state"] for e in finishes] == ["cancelled"]
    assert not [p for box in (a, b) for p in box.state_dir.rglob(f"{job_id}-*")]  # no output written anywhere

    done = await wait_job(client_b, (await client_b.call("job.submit", prompt="after"))["job_id"], timeout=120)
    assert done["state"] == "succeeded"  # box-b's worker goes on working


async def test_the_running_box_hears_a_cancel_at_once_not_at_its_next_renewal(
        make_daemon: DaemonFactory, client_of: Any, fleet_url: str, prompt_key_file: str) -> None:
    slow_beat = {"fleet": {"heartbeat_seconds": 60.0, "lease_seconds": 180.0}}  # renewals a minute apart
    a = make_daemon(merged(_box(fleet_url, "box-a", prompt_key_file), slow_beat))
    b = make_daemon(merged(_box(fleet_url, "box-b", prompt_key_file), slow_beat))
    client_a, client_b = await client_of(a), await client_of(b)
    await client_a.call("queue.pause")
    job_id = (await client_a.call("job.submit", prompt="slow beacon", steps=16))["job_id"]

    async def running_on_b() -> bool:
        job = await client_b.call("job.get", job_id=job_id)
        return bool(job["state"] == "running")

    await _until("box-b runs the job", running_on_b)
    await client_a.call("job.cancel", job_id=job_id)
    seen = await wait_job(client_b, job_id, timeout=60)  # a 3 s slow start, then 16 steps: over long before a renewal
    assert seen["state"] == "cancelled", seen
