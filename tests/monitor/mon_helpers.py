"""Helpers for the monitor tests: a config with overrides, a recording audit callback, a clock
the test moves, and a synthetic sample shaped like the sampler's."""

from __future__ import annotations

from typing import Any

from daemon import config
from tests.conftest import HOST_DISK_FLOORS_OFF

GIB = 1024 ** 3


def monitor_config(**overrides: Any) -> config.Config:
    """Shipped defaults (no system or user files) with `section__key=value` overrides."""
    return config.load(system_file=None, environ={}).replace(**overrides)


def sampling_config(**overrides: Any) -> config.Config:
    """For a monitor that samples this machine: the shipped defaults with the free-disk floors off
    (tests.conftest.HOST_DISK_FLOORS_OFF), then `overrides`."""
    return monitor_config(**{f"alerts__{key}": value for key, value in HOST_DISK_FLOORS_OFF.items()}, **overrides)


class AuditLog:
    """The daemon's audit callback, recording what it is given."""

    def __init__(self) -> None:
        self.entries: list[tuple[dict[str, Any] | None, str, str, dict[str, Any]]] = []

    async def __call__(self, actor: dict[str, Any] | None, action: str, subject: str, details: dict[str, Any]) -> None:
        self.entries.append((actor, action, subject, details))

    def actions(self) -> list[str]:
        return [entry[1] for entry in self.entries]


class Clock:
    def __init__(self, now: float = 1_800_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def sample(ts: float, host_percent: float = 50.0, gpus: list[dict[str, Any]] | None = None,
           disk_free: float = 100 * GIB, worker_rss: float | None = None, wait: float | None = None,
           failure_rate: float | None = None) -> dict[str, Any]:
    """A sample with the figures the rules read (the rest as the sampler leaves them when absent)."""
    return {
        "ts": ts, "interval": 1.0,
        "host": {"cpu_percent": 10.0, "memory": {"used": host_percent * GIB, "total": 100 * GIB,
                                                  "percent": host_percent}},
        "daemon": {"pid": 1, "rss": 50_000_000},
        "worker": {"pid": None, "rss": worker_rss},
        "gpu": {"available": bool(gpus), "reason": None if gpus else "NVML Shared Library Not Found"},
        "gpus": gpus or [],
        "disk": {"path": "/x", "free": disk_free, "total": 1000 * GIB},
        "queue": {"wait_seconds": wait},
        "jobs": {"finished": 0, "failed": 0, "failure_rate_percent": failure_rate},
    }
