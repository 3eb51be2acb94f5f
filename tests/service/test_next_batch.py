"""The batch handed to the worker behind the running one is queued (`next`), not running, and a
SIGTERM drain finishes the running batch without starting the waiting one."""

from __future__ import annotations

import asyncio
import time

from daemon.client import DaemonClient
from tests.configs import NO_WORKER

ONE_JOB_BATCHES = {"queue": {"max_batch": 1}, "daemon": {"shutdown_grace": 120.0}}


async def running_and_next(client: DaemonClient) -> tuple[str, str]:
    """Submit two jobs that cannot share a batch; return once the first runs and the second waits
    in the worker behind it."""
    first = (await client.call("job.submit", prompt="the running one", steps=80))["job_id"]
    second = (await client.call("job.submit", prompt="the waiting one", steps=4))["job_id"]
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        a = await client.call("job.get", job_id=first)
        b = await client.call("job.get", job_id=second)
        if a["state"] == "running" and a["progress"] > 0 and b["next"]:
            return first, second
        await asyncio.sleep(0.05)
    raise AssertionError(f"never saw one running and one next: {a['state']} {b}")


async def test_the_batch_waiting_in_the_worker_is_queued_next_not_running(make_daemon, client_of, wait_for):
    client = await client_of(make_daemon(ONE_JOB_BATCHES))
    first, second = await running_and_next(client)

    waiting = await client.call("job.get", job_id=second)
    assert (waiting["state"], waiting["started_at"], waiting["position"], waiting["attempts"]) == ("queued", None, 1, 0)
    status = await client.call("daemon.status")
    assert {k: status["queue"][k] for k in ("running", "queued", "next")} == {"running": 1, "queued": 1, "next": 1}
    listed = [job["job_id"] for job in (await client.call("job.list"))["jobs"]][:2]
    assert listed == [first, second]

    third = (await client.call("job.submit", prompt="behind the next one", steps=4))["job_id"]
    assert (await client.call("job.get", job_id=third))["position"] == 2

    cancelled = await client.call("job.cancel", job_id=second)
    assert cancelled["state"] == "cancelled"
    done = await wait_for(client, third)
    assert done["state"] == "succeeded"
    assert (await client.call("job.get", job_id=first))["state"] == "succeeded"
    second_job = await client.call("job.get", job_id=second)
    assert (second_job["state"], second_job["outputs"], second_job["started_at"]) == ("cancelled", [], None)


async def test_a_drain_finishes_the_running_batch_and_never_starts_the_waiting_one(make_daemon, client_of):
    daemon = make_daemon(ONE_JOB_BATCHES)
    client = await client_of(daemon)
    first, second = await running_and_next(client)

    assert await asyncio.to_thread(daemon.terminate) == 0
    assert "waiting in the worker go back to the queue" in daemon.read_log()
    again = make_daemon(state_from=daemon, config=NO_WORKER)
    client = await client_of(again)
    ran = await client.call("job.get", job_id=first)
    assert (ran["state"], ran["attempts"]) == ("succeeded", 1)
    waited = await client.call("job.get", job_id=second)
    assert (waited["state"], waited["attempts"], waited["started_at"]) == ("queued", 0, None)
    starts = (await client.call("audit.tail", action="job.start", limit=50))["entries"]
    assert [e["subject"] for e in starts] == [first]
