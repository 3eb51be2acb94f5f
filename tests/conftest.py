"""Shared fixtures: the tiny model built once, and real daemons on temporary sockets.

A daemon here is the real `sai daemon` in its own process (so tests can SIGTERM or kill -9 it),
with a temp state dir, a temp socket and a config file holding the test's overrides.
"""

from __future__ import annotations

import asyncio
import shutil
import tempfile
import time
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from daemon.client import DaemonClient
from tests.harness import DaemonProcess, build_tiny, merged

HOST_DISK_FLOORS_OFF: dict[str, float] = {
    "disk_free_warning_gib": 0.0, "disk_free_critical_gib": 0.0, "disk_refuse_below_gib": 0.0}
"""The free-disk alerts and refusal measure the machine, not the code under test: a CI machine left
with under 10 GiB by the container build raised them in tests about something else. Their own tests
(tests/monitor/test_disk.py) set floors relative to the free space they find."""

DEFAULT_TEST_CONFIG: dict[str, dict[str, Any]] = {
    "defaults": {"width": 64, "height": 64, "steps": 4},
    "model": {"threads": 1},
    "alerts": HOST_DISK_FLOORS_OFF,
}


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny model, built once per session in a subprocess (torch stays out of the tests)."""
    return build_tiny(tmp_path_factory.mktemp("models") / "tiny")


@pytest.fixture(scope="session")
def other_model(tiny_model: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A second SD-shaped model for registry tests (`[models.other] path = ...`): the tiny model's
    files copied to a path of their own."""
    target = tmp_path_factory.mktemp("other") / "other"
    shutil.copytree(tiny_model, target)
    return target


DaemonFactory = Callable[..., DaemonProcess]


@pytest.fixture
def make_daemon(tiny_model: Path) -> Iterator[DaemonFactory]:
    """`make_daemon(config={...}, start=True)`: a real daemon on a temporary socket and state dir."""
    made: list[DaemonProcess] = []
    roots: list[Path] = []

    def factory(config: dict[str, dict[str, Any]] | None = None, start: bool = True,
                state_from: DaemonProcess | None = None) -> DaemonProcess:
        root = Path(tempfile.mkdtemp(prefix="sai-", dir="/tmp"))  # short: socket paths are limited to 107 bytes
        roots.append(root)
        daemon = DaemonProcess.create(root, merged(DEFAULT_TEST_CONFIG, config or {}),
                                      state_from.state_dir if state_from else None, tiny_model)
        made.append(daemon)
        return daemon.start() if start else daemon

    yield factory
    for daemon in made:
        daemon.stop()
    for root in roots:
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture
async def client_of() -> AsyncIterator[Callable[[DaemonProcess], Any]]:
    opened: list[DaemonClient] = []

    async def connect(daemon: DaemonProcess) -> DaemonClient:
        client = await DaemonClient.connect(daemon.socket)
        opened.append(client)
        return client

    yield connect
    for client in opened:
        await client.close()


async def wait_job(client: DaemonClient, job_id: str, states: tuple[str, ...] = ("succeeded", "failed", "cancelled"),
                   timeout: float = 120.0) -> dict[str, Any]:
    """Poll job.get until the job reaches one of `states`."""
    deadline = time.monotonic() + timeout
    while True:
        job = await client.call("job.get", job_id=job_id)
        if job["state"] in states:
            return job
        if time.monotonic() > deadline:
            raise TimeoutError(f"{job_id} still {job['state']} after {timeout} s")
        await asyncio.sleep(0.05)


@pytest.fixture
def wait_for() -> Callable[..., Any]:
    return wait_job
