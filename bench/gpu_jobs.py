"""Driving a real daemon's queue for bench/gpu_check.py: submit, pause and resume, and wait on the
job events (not polling: a poll's interval would show up as overhead in a 1% comparison)."""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from daemon.client import DaemonClient
from tests.harness import DaemonProcess


async def connect(daemon: DaemonProcess) -> DaemonClient:
    client = await DaemonClient.connect(daemon.socket)
    await client.call("events.subscribe", topics=["job", "queue"])
    return client


async def finished(client: DaemonClient, ids: set[str], timeout: float = 600) -> dict[str, dict[str, Any]]:
    """Wait for every job of `ids` to end; each one's last state event (`state`, `error`)."""
    done: dict[str, dict[str, Any]] = {}
    deadline = time.monotonic() + timeout
    while set(done) != ids:
        event = await client.next_event(timeout=max(1.0, deadline - time.monotonic()))
        if event is None:
            raise TimeoutError(f"{len(ids) - len(done)} jobs did not end")
        data = event["data"]
        if event["topic"] == "job" and data.get("kind") == "state" and data.get("job_id") in ids \
                and data["state"] in ("succeeded", "failed", "cancelled"):
            done[data["job_id"]] = data
    return done


async def full_queue(client: DaemonClient, jobs: int, size: int, offset: int = 0) -> float:
    """Images/s of `jobs` jobs submitted to a paused queue, from resume to the last success."""
    await client.call("queue.pause")
    ids = {(await client.call("job.submit", prompt=f"bench {offset + i}", seed=offset + i, width=size,
                              height=size))["job_id"] for i in range(jobs)}
    started = time.perf_counter()
    await client.call("queue.resume")
    states = await finished(client, ids)
    seconds = time.perf_counter() - started
    bad = [s for s in states.values() if s["state"] != "succeeded"]
    if bad:
        raise RuntimeError(f"{len(bad)} of {jobs} jobs did not succeed: {bad[0]}")
    return jobs / seconds


async def lone_jobs(client: DaemonClient, jobs: int, size: int) -> list[float]:
    seconds = []
    for seed in range(jobs):
        started = time.perf_counter()
        job_id = (await client.call("job.submit", prompt=f"lone {seed}", seed=seed, width=size, height=size))["job_id"]
        [state] = (await finished(client, {job_id})).values()
        if state["state"] != "succeeded":
            raise RuntimeError(f"lone job {state}")
        seconds.append(time.perf_counter() - started)
    return seconds


async def oom_jobs(client: DaemonClient, images: int, size: int) -> dict[str, dict[str, Any]]:
    await client.call("queue.pause")
    ids = {(await client.call("job.submit", prompt=f"oom {i}", seed=i, width=size, height=size,
                              steps=4))["job_id"] for i in range(images)}
    await client.call("queue.resume")
    return await finished(client, ids)


async def one_job(client: DaemonClient, size: int) -> dict[str, Any]:
    job_id = (await client.call("job.submit", prompt="after", seed=1, width=size, height=size, steps=4))["job_id"]
    [state] = (await finished(client, {job_id})).values()
    return state


if __name__ == "__main__":
    print("helpers of bench/gpu_check.py (run that instead)")
