"""Monitor fixtures (new names only): `open_monitor` opens real Monitors on a temp state dir."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest

from daemon.events import EventBus
from daemon.monitor.service import Monitor
from tests.monitor.mon_helpers import AuditLog, sampling_config


@pytest.fixture
async def open_monitor(tmp_path: Path) -> AsyncIterator[Callable[..., Any]]:
    """`await open_monitor(config=None, bus=None, audit=None, state_dir=None, **open_kwargs)`;
    returns (monitor, bus, audit). Every monitor still open is closed after the test."""
    opened: list[Monitor] = []

    async def factory(config: Any = None, bus: EventBus | None = None, audit: AuditLog | None = None,
                      state_dir: Path | None = None, outputs_dir: Path | None = None,
                      **kwargs: Any) -> tuple[Monitor, EventBus, AuditLog]:
        bus = bus or EventBus()
        audit = audit or AuditLog()
        state = state_dir or tmp_path / "state"
        state.mkdir(parents=True, exist_ok=True)
        outputs = outputs_dir or state / "outputs"
        outputs.mkdir(parents=True, exist_ok=True)
        kwargs.setdefault("worker_pid", lambda: None)
        kwargs.setdefault("worker_memory", lambda: None)
        kwargs.setdefault("queue_wait", lambda: None)
        monitor = await Monitor.open(config or sampling_config(), state, outputs, bus, audit=audit, **kwargs)
        opened.append(monitor)
        return monitor, bus, audit

    yield factory
    for monitor in opened:
        await monitor.close()
