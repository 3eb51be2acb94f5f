"""Cancelling a job another box runs: the request waits in PostgreSQL for the attempt running now,
the running box reads it with its next lease renewal and cancels as a local job.cancel does; a
request for an earlier attempt never stops a later run of the job."""

from __future__ import annotations

from typing import Any

from daemon.queue.jobs import QUEUED, RUNNING
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

    back = await b.requeue(job.job_id, 1, error="box b stopping")  # before b acted on it
    assert back.job.state == QUEUED
    assert not await a.request_cancel(job.job_id, 1, "alice on box a")  # that attempt no longer runs
    second = await a.claim("cpu0")
    assert second is not None and (second.job.state, second.attempt) == (RUNNING, 3)
    assert await a.renew_held([(job.job_id, 3)]) == ([], {})  # the old request does not stop the new run
    assert await b.renew_held([(job.job_id, 1)]) == ([job.job_id], {})  # and the stale holder only hears it lost


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
