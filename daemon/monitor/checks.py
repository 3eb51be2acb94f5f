"""Config checks for `[monitor]` and `[alerts]`, kept free of heavy imports (daemon.config uses them)."""

from __future__ import annotations

import ipaddress
from typing import Any, Callable

LOCAL_NAMES = ("localhost", "localhost.localdomain", "ip6-localhost")


def parse_listen(text: str) -> tuple[str, int]:
    """"HOST:PORT" or "[V6]:PORT" on a loopback address; ValueError says why not.

    Loopback only: the exporter has no authentication, and the socket's roles do not apply to it."""
    host, sep, port_text = text.rpartition(":")
    if not sep or not host:
        raise ValueError("must be HOST:PORT, e.g. 127.0.0.1:9464")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    try:
        port = int(port_text)
    except ValueError:
        raise ValueError(f"port {port_text!r} is not a number") from None
    if not 1 <= port <= 65535:
        raise ValueError(f"port {port} is out of range 1 to 65535")
    if host.lower() in LOCAL_NAMES:
        return "127.0.0.1", port
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        raise ValueError(f"{host!r} is not an IP address; use a loopback address such as 127.0.0.1") from None
    if not address.is_loopback:
        raise ValueError(f"{host} is not a loopback address: the exporter has no authentication, so it only "
                         "listens on 127.0.0.1 or ::1 (put a proxy in front to publish it)")
    return str(address), port


def _listen(value: Any) -> str | None:
    if value == "":
        return None
    try:
        parse_listen(value)
    except ValueError as exc:
        return str(exc)
    return None


def _positive(value: Any) -> str | None:
    return None if value > 0 else "must be greater than 0"


def _non_negative(value: Any) -> str | None:
    return None if value >= 0 else "must be 0 or more (0 turns the level off)"


def _percent(value: Any) -> str | None:
    return None if 0 <= value <= 100 else "must be between 0 and 100 (0 turns the level off)"


def _fraction(value: Any) -> str | None:
    return None if 0 <= value < 1 else "must be at least 0 and below 1 (a fraction of the threshold)"


MONITOR_CHECKS: dict[str, Callable[[Any], str | None]] = {
    "monitor.interval": _positive,
    "monitor.ring_seconds": _positive,
    "monitor.history_days": _positive,
    "monitor.nvml_slow_interval": _positive,
    "monitor.listen": _listen,
    "alerts.hysteresis": _fraction,
    "alerts.raise_after_samples": _positive,
    "alerts.clear_after_samples": _positive,
    "alerts.retain_days": _positive,
    "alerts.gpu_memory_warning_percent": _percent,
    "alerts.gpu_memory_critical_percent": _percent,
    "alerts.host_memory_warning_percent": _percent,
    "alerts.host_memory_critical_percent": _percent,
    "alerts.worker_rss_warning_gib": _non_negative,
    "alerts.worker_rss_critical_gib": _non_negative,
    "alerts.disk_free_warning_gib": _non_negative,
    "alerts.disk_free_critical_gib": _non_negative,
    "alerts.disk_refuse_below_gib": _non_negative,
    "alerts.queue_wait_warning_seconds": _non_negative,
    "alerts.queue_wait_critical_seconds": _non_negative,
    "alerts.failure_rate_warning_percent": _percent,
    "alerts.failure_rate_critical_percent": _percent,
    "alerts.failure_rate_window_seconds": _positive,
    "alerts.failure_rate_min_jobs": _positive,
    "alerts.gpu_temperature_warning_c": _non_negative,
    "alerts.gpu_temperature_critical_c": _non_negative,
}
