"""A leaking, crashing or poisoned worker costs a restart and a retried job, never the daemon."""

from __future__ import annotations

import asyncio
import os
import signal

LEAKY = "tests.pipeline_doubles:LeakingPipelineForTests"


async def next_queue_event(client, kind: str, timeout: float = 180) -> dict:
    while True:
        event = await client.next_event(timeout=timeout)
        if event["topic"] == "queue" and event["data"]["kind"] == kind:
            return event["data"]


async def wait_step(client, job_id: str, timeout: float = 180) -> None:
    while True:
        event = await client.next_event(timeout=timeout)
        data = event["data"]
        if event["topic"] == "job" and data.get("job_id") == job_id and data.get("kind") == "progress":
            return


async def test_a_real_leak_is_detected_and_the_worker_restarted(make_daemon, client_of, wait_for):
    daemon = make_daemon({"worker": {"pipeline_wrapper": LEAKY, "leak_window": 4, "leak_slope_mb": 20.0},
                          "queue": {"max_batch": 1}})
    client = await client_of(daemon)
    await client.call("events.subscribe", topics=["queue"])
    first = await wait_for(client, (await client.call("job.submit", prompt="baseline"))["job_id"])
    assert first["state"] == "succeeded"
    baseline = (await client.call("daemon.status"))["worker"]["memory"]["rss"]
    ids = [(await client.call("job.submit", prompt=f"leak {i}"))["job_id"] for i in range(4)]
    leak = await next_queue_event(client, "worker.leak")
    assert leak["slope_mb"] > 20 and "MiB per batch" in leak["error"]
    await next_queue_event(client, "worker.restarted")
    for job_id in ids:
        assert (await wait_for(client, job_id))["state"] == "succeeded"
    after = await wait_for(client, (await client.call("job.submit", prompt="after restart"))["job_id"])
    assert after["state"] == "succeeded"
    status = (await client.call("daemon.status"))["worker"]
    assert status["restarts"] == 1
    assert status["memory"]["rss"] < baseline + 100 * 2**20, (status["memory"]["rss"], baseline)
    assert "possible leak" in daemon.read_log()


async def test_crash_loop_stops_restarts_pauses_and_manual_restart_recovers(make_daemon, client_of, wait_for):
    daemon = make_daemon({"worker": {"crash_loop_count": 2, "crash_window": 120.0},
                          "queue": {"max_attempts": 5}})
    client = await client_of(daemon)
    await client.call("events.subscribe", topics=["queue", "job"])
    job_id = (await client.call("job.submit", prompt="crashes", width=256, height=256, steps=60))["job_id"]
    for _ in range(2):
        await wait_step(client, job_id)
        [worker] = daemon.worker_pids()
        os.kill(worker, signal.SIGKILL)
        crash = await next_queue_event(client, "worker.crashed")
        assert "killed by SIGKILL" in crash["error"]
    loop = await next_queue_event(client, "worker.crash_loop")
    assert "crashed 2 times" in loop["error"] and "SIGKILL" in loop["error"]
    status = await client.call("daemon.status")
    assert status["queue"]["paused"] is True and status["worker"]["halted"]
    alerts = {a["key"]: a for a in (await client.call("alerts.list", state="active"))["alerts"]}
    assert alerts["worker.crash_loop"]["severity"] == "critical" and "SIGKILL" in alerts["worker.crash_loop"]["message"]
    assert alerts["worker.crash"]["severity"] == "warning"
    await client.call("alerts.ack", alert_id=alerts["worker.crash_loop"]["alert_id"])
    acks = (await client.call("audit.tail", action="alert.ack"))["entries"]
    assert acks and acks[-1]["actor"]["uid"] >= 0 and acks[-1]["subject"]
    assert (await client.call("job.get", job_id=job_id))["state"] == "queued"
    reply = await client.call("worker.restart", reason="fixed the driver")
    assert reply["restarting"] is True
    await next_queue_event(client, "worker.restarted")
    await client.call("queue.resume")
    job = await wait_for(client, job_id, timeout=300)
    assert job["state"] == "succeeded" and job["attempts"] == 3
    active = {a["key"] for a in (await client.call("alerts.list", state="active"))["alerts"]}
    assert "worker.crash_loop" not in active


async def test_a_poison_job_is_isolated_then_quarantined(make_daemon, client_of, wait_for):
    daemon = make_daemon({"queue": {"max_batch": 4, "max_attempts": 2, "start_paused": True},
                          "worker": {"crash_loop_count": 10}})
    client = await client_of(daemon)
    poison = (await client.call("job.submit", prompt="poison", steps=40, width=128, height=128))["job_id"]
    innocents = [(await client.call("job.submit", prompt=f"innocent {i}", steps=40, width=128, height=128))["job_id"]
                 for i in range(2)]
    await client.call("events.subscribe", topics=["job"])
    await client.call("queue.resume")
    # First run: one batch of three; the fault kills the worker, so every job in it is suspect.
    await wait_step(client, poison)
    started = {(await client.call("job.get", job_id=j))["started_at"] for j in [poison, *innocents]}
    assert len(started) == 1
    os.kill(daemon.worker_pids()[0], signal.SIGKILL)
    # From now on each runs alone; the fault follows the poison job only.
    await wait_step(client, poison, timeout=300)
    os.kill(daemon.worker_pids()[0], signal.SIGKILL)
    job = await wait_for(client, poison, timeout=300)
    assert job["state"] == "failed" and "quarantined after 2 attempts" in job["error"] and "SIGKILL" in job["error"]
    done = [await wait_for(client, j, timeout=300) for j in innocents]
    assert all(j["state"] == "succeeded" for j in done)
    assert done[0]["started_at"] != done[1]["started_at"]
    await asyncio.sleep(0)
