"""The real socket server and method table in front of a Monitor, for API and CLI tests before the
daemon wires the monitor in: the host object carries only what the monitor methods read."""

from __future__ import annotations

import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from daemon.api import load_all
from daemon.config import Config
from daemon.events import EventBus
from daemon.server import SocketServer


@dataclass
class MonitorHost:
    """What `ctx.daemon` is for the monitor methods: the monitor (and the bus events.subscribe uses)."""

    monitor: Any
    bus: EventBus


class ServedMonitor:
    def __init__(self, monitor: Any, bus: EventBus, config: Config) -> None:
        self.root = Path(tempfile.mkdtemp(prefix="sai-mon-", dir="/tmp"))  # socket paths are limited to 107 bytes
        self.socket = self.root / "s.sock"
        load_all()
        self.server = SocketServer(self.socket, MonitorHost(monitor, bus), config.auth, bus)

    async def __aenter__(self) -> ServedMonitor:
        self.server.claim()
        await self.server.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.server.close()
        shutil.rmtree(self.root, ignore_errors=True)
