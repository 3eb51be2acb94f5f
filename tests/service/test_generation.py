"""Jobs through a real daemon, its worker and the tiny diffusers model."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import io

import numpy as np
from PIL import Image

# Outputs are encrypted at rest: the tests read them back through `output.export`, as a client does.
# The visible mark carries the job id, so tests comparing pixels across jobs turn it off.
UNMARKED = {"watermark": {"visible": False}}


async def exported_png(client, job: dict, index: int = 0) -> bytes:
    """The decrypted PNG of output `index`, fetched in chunks and checked against the reported hash."""
    chunks, offset, reply = [], 0, None
    while reply is None or not reply["eof"]:
        reply = await client.call("output.export", job_id=job["job_id"], index=index, offset=offset)
        chunks.append(base64.b64decode(reply["data"]))
        offset += len(chunks[-1])
    png = b"".join(chunks)
    assert hashlib.sha256(png).hexdigest() == reply["sha256"] == job["outputs"][index]["png_sha256"]
    return png


async def exported_pixels(client, job: dict, index: int = 0) -> np.ndarray:
    with Image.open(io.BytesIO(await exported_png(client, job, index))) as image:
        return np.asarray(image.convert("RGB"))


async def test_submit_produces_png_of_requested_size(make_daemon, client_of, wait_for):
    daemon = make_daemon()
    client = await client_of(daemon)
    reply = await client.call("job.submit", prompt="a lighthouse at dusk", width=96, height=64, count=2)
    assert reply["position"] == 1 and reply["warnings"] == [] and 0 <= reply["risk"] <= 1
    job = await wait_for(client, reply["job_id"])
    assert job["state"] == "succeeded", job["error"]
    assert job["progress"] == 1.0 and job["started_at"] and job["finished_at"]
    assert [o["index"] for o in job["outputs"]] == [0, 1]
    for output in job["outputs"]:
        assert output["path"].endswith(f"-{output['index']}.png.sai") and (output["width"], output["height"]) == (96, 64)
        with Image.open(io.BytesIO(await exported_png(client, job, output["index"]))) as image:
            assert image.size == (96, 64) and image.mode == "RGB"


async def test_progress_and_state_events_stream_to_subscribers(make_daemon, client_of):
    daemon = make_daemon()
    client = await client_of(daemon)
    assert (await client.call("events.subscribe", topics=["job"]))["topics"] == ["job"]
    job_id = (await client.call("job.submit", prompt="events", steps=6))["job_id"]
    states, steps = [], []
    while "succeeded" not in states:
        event = await client.next_event(timeout=120)
        assert event["topic"] == "job"
        data = event["data"]
        if data["job_id"] != job_id:
            continue
        if data["kind"] == "state" and (not states or states[-1] != data["state"]):
            states.append(data["state"])  # "running" comes twice: handed to the worker, then started
        elif data["kind"] == "progress":
            steps.append(data["step"])
    assert states == ["queued", "running", "succeeded"]
    assert steps[0] == 1 and steps[-1] == 6 and steps == sorted(set(steps))  # the steps between at most 10/s


async def test_start_order_is_priority_then_fifo(make_daemon, client_of, wait_for):
    daemon = make_daemon({"queue": {"max_batch": 1, "start_paused": True}})
    client = await client_of(daemon)
    plan = ["low", "normal", "critical", "normal", "high", "low", "critical"]
    ids = [(await client.call("job.submit", prompt=f"job {i}", priority=p))["job_id"] for i, p in enumerate(plan)]
    await client.call("queue.resume")
    jobs = [await wait_for(client, job_id) for job_id in ids]
    started = sorted(jobs, key=lambda job: job["started_at"])
    rank = {"critical": 0, "high": 1, "normal": 2, "low": 3}
    expected = sorted(zip(plan, ids), key=lambda pair: (rank[pair[0]], ids.index(pair[1])))
    assert [job["job_id"] for job in started] == [job_id for _, job_id in expected]


async def test_same_seed_gives_identical_pixels(make_daemon, client_of, wait_for):
    daemon = make_daemon(UNMARKED)
    client = await client_of(daemon)
    params = dict(prompt="reproducible", seed=1234, reproducible=True)
    first, second = [await wait_for(client, (await client.call("job.submit", **params))["job_id"]) for _ in range(2)]
    other = await wait_for(client, (await client.call("job.submit", **{**params, "seed": 1235}))["job_id"])
    pixels = [await exported_pixels(client, job) for job in (first, second, other)]
    assert np.array_equal(pixels[0], pixels[1])
    assert not np.array_equal(pixels[0], pixels[2])


async def test_compatible_jobs_run_as_one_batch(make_daemon, client_of, wait_for):
    daemon = make_daemon({"queue": {"max_batch": 4, "start_paused": True}, **UNMARKED})
    client = await client_of(daemon)
    same = [(await client.call("job.submit", prompt=f"batch {i}", seed=i))["job_id"] for i in range(3)]
    alone = (await client.call("job.submit", prompt="other size", width=128))["job_id"]
    solo = (await client.call("job.submit", prompt="alone", reproducible=True))["job_id"]
    await client.call("queue.resume")
    jobs = {job_id: await wait_for(client, job_id) for job_id in [*same, alone, solo]}
    assert all(job["state"] == "succeeded" for job in jobs.values())
    assert len({jobs[job_id]["started_at"] for job_id in same}) == 1
    assert jobs[alone]["started_at"] != jobs[same[0]]["started_at"]
    assert jobs[solo]["started_at"] not in {jobs[j]["started_at"] for j in [*same, alone]}
    # A batch changes pixels by at most 1/255 compared with running alone.
    batched = (await exported_pixels(client, jobs[same[0]])).astype(int)
    rerun = await wait_for(client, (await client.call("job.submit", prompt="batch 0", seed=0,
                                                       reproducible=True))["job_id"])
    alone_pixels = (await exported_pixels(client, rerun)).astype(int)
    assert np.abs(batched - alone_pixels).max() <= 1


async def test_cancel_queued_is_immediate_and_running_stops_at_next_step(make_daemon, client_of, wait_for):
    daemon = make_daemon()
    client = await client_of(daemon)
    await client.call("queue.pause")
    queued = (await client.call("job.submit", prompt="never runs"))["job_id"]
    assert (await client.call("job.cancel", job_id=queued))["state"] == "cancelled"
    assert (await client.call("job.get", job_id=queued))["state"] == "cancelled"
    await client.call("queue.resume")
    long = (await client.call("job.submit", prompt="long", width=256, height=256, steps=150))["job_id"]
    await client.call("events.subscribe", topics=["job"])
    while True:  # wait for the second step so the job is surely inside the pipeline
        event = await client.next_event(timeout=120)
        if event["data"].get("job_id") == long and event["data"].get("step", 0) >= 2:
            break
    assert (await client.call("daemon.status"))["queue"] == {"paused": False, "queued": 0, "next": 0, "running": 1}
    assert (await client.call("job.cancel", job_id=long))["state"] == "cancelling"
    job = await wait_for(client, long, timeout=30)
    assert job["state"] == "cancelled" and job["progress"] < 0.5 and job["outputs"] == []
    assert (await client.call("daemon.status"))["queue"] == {"paused": False, "queued": 0, "next": 0, "running": 0}
    # The worker is still usable afterwards.
    after = await wait_for(client, (await client.call("job.submit", prompt="after cancel"))["job_id"])
    assert after["state"] == "succeeded"


async def test_client_token_makes_submit_idempotent(make_daemon, client_of):
    daemon = make_daemon({"queue": {"start_paused": True}})
    client = await client_of(daemon)
    first, second = await asyncio.gather(
        client.call("job.submit", prompt="retry me", client_token="tok-1"),
        client.call("job.submit", prompt="retry me", client_token="tok-1"))
    third = await client.call("job.submit", prompt="retry me", client_token="tok-1")
    assert first["job_id"] == second["job_id"] == third["job_id"]
    assert third.get("duplicate") is True
    listed = (await client.call("job.list"))["jobs"]
    assert [job["job_id"] for job in listed] == [first["job_id"]]
    other = await client.call("job.submit", prompt="retry me", client_token="tok-2")
    assert other["job_id"] != first["job_id"]
