"""LISTEN/NOTIFY wakes an idle claimer; a PostgreSQL restart loses nothing acknowledged."""

from __future__ import annotations

import asyncio
import statistics
import time

import pytest

from daemon.fleet.errors import FleetUnavailable
from daemon.fleet.wakeup import Wakeup
from tests.fleet.conftest import QueueFactory, make_job
from tests.fleet.pg_helpers import PgCluster

POLL = 30.0
"""The idle claimer's fallback poll: far longer than any wake-up these tests accept."""


async def test_notify_wakes_a_waiting_claimer(open_queue: QueueFactory, fleet_url: str) -> None:
    submitter, claimer = await open_queue("a"), await open_queue("b")
    wakeup = Wakeup(fleet_url)
    await wakeup.start()
    latencies = []
    try:
        for i in range(20):
            assert await claimer.claim("cpu0") is None
            waiting = asyncio.create_task(wakeup.wait(POLL))
            await asyncio.sleep(0.01)  # the claimer is idle, waiting
            submitted = time.perf_counter()
            await submitter.submit(make_job(f"job {i}"))
            assert await waiting
            held = await claimer.claim("cpu0")
            latencies.append(time.perf_counter() - submitted)
            assert held is not None
    finally:
        await wakeup.close()
    p50, worst = statistics.median(latencies), max(latencies)
    print(f"\nsubmit -> NOTIFY -> claimed: p50 {p50 * 1000:.1f} ms, max {worst * 1000:.1f} ms (n={len(latencies)})")
    assert worst < 5.0  # generous: a busy 2-core machine; the fallback poll alone would take 30 s


async def test_restart_keeps_acknowledged_submits_and_reconnects(
        open_queue: QueueFactory, fleet_url: str, pg_cluster: PgCluster) -> None:
    queue = await open_queue("a")
    wakeup = Wakeup(fleet_url, retry_seconds=0.2)
    await wakeup.start()
    try:
        acknowledged = [make_job(f"before {i}") for i in range(25)]
        for job in acknowledged:
            await queue.submit(job)
        pg_cluster.stop("fast")
        with pytest.raises(FleetUnavailable, match="the fleet database .* is unreachable"):
            await queue.submit(make_job("during the outage"))
        pg_cluster.start()
        kept = await queue.unfinished()  # a new connection: the pool replaced the closed ones
        assert sorted(held.job_id for held in kept) == sorted(job.job_id for job in acknowledged)
        assert all(held.job.prompt.startswith("before") for held in kept)
        for _ in range(100):  # the listener connects again in the background
            if wakeup.listening:
                break
            await asyncio.sleep(0.1)
        assert wakeup.listening
        await wakeup.wait(0)  # the reconnect's own wake-up
        await queue.submit(make_job("after"))
        assert await wakeup.wait(POLL)
        assert (await queue.counts()) == {"queued": 26}
        pg_cluster.restart()  # pg_ctl restart: the same, in one step
        assert (await queue.counts()) == {"queued": 26}
        held = await queue.claim("cpu0")
        assert held is not None and held.job_id == acknowledged[0].job_id
    finally:
        await wakeup.close()
        if not (pg_cluster.data / "postmaster.pid").exists():
            pg_cluster.start()
