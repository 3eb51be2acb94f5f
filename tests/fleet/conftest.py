"""One private PostgreSQL cluster per test session (tests.fleet.pg_helpers), a fresh database per test."""

from __future__ import annotations

import itertools
import time
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import pytest

from daemon.fleet.connection import Database
from daemon.fleet.jobs import FleetQueue
from daemon.queue.jobs import PRIORITY_RANK, QUEUED, Job, new_job_id
from daemon.queue.store import PlainText
from tests.fleet.pg_helpers import PgCluster

_numbers = itertools.count(1)


@pytest.fixture(scope="session")
def pg_cluster() -> Iterator[PgCluster]:
    cluster = PgCluster.create()
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.destroy()


@pytest.fixture
def fleet_url(pg_cluster: PgCluster) -> str:
    """The URL of a new, empty database on the session's cluster."""
    name = f"fleet_{next(_numbers)}"
    pg_cluster.psql(f"CREATE DATABASE {name}")
    return pg_cluster.url(name)


QueueFactory = Callable[..., Any]


@pytest.fixture
async def open_queue(fleet_url: str) -> AsyncIterator[QueueFactory]:
    """`await open_queue(box="a", lease_seconds=30, ...)`: a FleetQueue on its own pool (one per box)."""
    opened: list[Database] = []

    async def factory(box: str = "a", *, lease_seconds: float = 30.0, max_attempts: int = 3,
                      aging_seconds: float = 300.0, url: str | None = None) -> FleetQueue:
        db = await Database.open(url or fleet_url)
        opened.append(db)
        return FleetQueue(db, PlainText(), box=box, lease_seconds=lease_seconds, max_attempts=max_attempts,
                          aging_seconds=aging_seconds)

    yield factory
    for db in opened:
        await db.close()


def make_job(prompt: str = "a lighthouse", *, priority: str = "normal", model: str = "tiny",
             token: str | None = None, uid: int = 1000, user: str = "alice", waited: float = 0.0) -> Job:
    """A queued job as the queue manager makes one (`waited`: seconds since it was enqueued)."""
    now = time.time()
    return Job(job_id=new_job_id(), seq=0, state=QUEUED, priority=PRIORITY_RANK[priority],
               params={"width": 64, "height": 64, "steps": 4, "guidance": 7.5, "count": 1, "seed": 1,
                       "model": model},
               prompt=prompt, negative_prompt="", user=user, uid=uid, created_at=now - waited,
               enqueued_at=now - waited, client_token=token, model_id=model)


@pytest.fixture
def prompt_key_file(tmp_path_factory: pytest.TempPathFactory) -> str:
    """A fleet prompt key made as an operator makes it (daemon.fleet.prompt_key.generate), shared by
    every daemon of the test."""
    from daemon.fleet.prompt_key import generate
    path = tmp_path_factory.mktemp("fleet-key") / "prompt.key"
    generate(path)
    return str(path)


def member_config(url: str, name: str, key_file: str, **fleet: Any) -> dict[str, dict[str, Any]]:
    """The config overrides of a daemon that is box `name` of the fleet at `url`."""
    return {"daemon": {"installation": name},
            "fleet": {"database": url, "prompt_key_file": key_file, "heartbeat_seconds": 0.2,
                      "reach": f"ssh ops@{name}", **fleet}}
