"""A box's membership: each heartbeat reaps, and a database outage is an alarm raised then cleared."""

from __future__ import annotations

import asyncio

from daemon.fleet.boxes import BoxInfo
from daemon.fleet.jobs import Reaped
from daemon.fleet.member import FleetMember
from daemon.queue.store import PlainText
from tests.fleet.conftest import QueueFactory, make_job
from tests.fleet.pg_helpers import PgCluster


async def test_heartbeat_reaps_and_alarms_while_the_database_is_down(
        fleet_url: str, pg_cluster: PgCluster, open_queue: QueueFactory) -> None:
    faults: list[str | None] = []
    reaped: list[Reaped] = []
    member = await FleetMember.join(fleet_url, PlainText(), lambda: BoxInfo("watcher", workers=1), lease_seconds=30,
                                    heartbeat_seconds=0.1, max_attempts=3, aging_seconds=300,
                                    on_fault=faults.append, on_reaped=reaped.extend)
    try:
        dying = await open_queue("dying", lease_seconds=0.3)
        job = make_job()
        await dying.submit(job)
        assert await dying.claim("cpu0") is not None
        await asyncio.sleep(0.5)  # the box "died": no renewal
        await member.beat()
        assert [(r.job_id, r.box, r.state) for r in reaped] == [(job.job_id, "dying", "queued")]

        pg_cluster.stop("fast")
        try:
            await member.beat()
            await member.beat()  # told each time (the alert stays up), logged once
        finally:
            pg_cluster.start()
        assert len(faults) == 2 and all(f and "the fleet database" in f and "unreachable" in f for f in faults)
        await member.beat()
        assert faults[-1] is None and member.beats == 2
        assert [box["name"] for box in (await member.status())["boxes"]] == ["watcher"]
    finally:
        await member.leave()
