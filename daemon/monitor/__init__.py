"""Monitoring: a sampler (host, processes, GPUs through NVML) into a ring buffer, per-minute history in
SQLite, alert rules with hysteresis, and a Prometheus view.

The package imports lightly: psutil, aiosqlite and prometheus_client load only with `Monitor`
(from `daemon.monitor.service`). The `[monitor]` and `[alerts]` ranges are in config/default.toml.
"""

from __future__ import annotations

from typing import Any

__all__ = ["Monitor"]


def __getattr__(name: str) -> Any:
    if name == "Monitor":
        from daemon.monitor.service import Monitor

        return Monitor
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
