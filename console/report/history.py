"""Memory over the report's window, from the monitor history the daemon keeps (`metrics.history`).

The job rows carry the worker's figures once per batch; the monitor's per-minute aggregates add
the rest of the picture between batches: the worker's and the daemon's RSS, the host's memory in
use, torch's peak on CUDA and each GPU's memory in use. Each point holds the largest value seen in
its bucket (the monitor's per-minute maxima, regrouped), since a capacity plan is about peaks,
not averages.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any, TypedDict

from console.report.stats import bucket_size
from daemon.protocol import RpcError

if TYPE_CHECKING:
    from daemon.client import DaemonClient

MAX_POINTS = 20_000
"""The most points `metrics.history` answers with."""

SERIES = {
    "worker_rss": "worker.rss",
    "daemon_rss": "daemon.rss",
    "host_memory_used": "host.memory.used",
    "torch_peak": "worker.torch_peak",
}
"""Report name -> the monitor's dotted name; GPUs add `gpu<index>_memory_used`."""

NONE_KEPT = ("the monitor kept no memory figures in this window (it samples only while the daemon runs, "
             "with monitor.enabled)")

LABELS = {"worker_rss": "worker RSS", "daemon_rss": "daemon RSS", "host_memory_used": "host memory in use",
          "torch_peak": "torch peak (worker)"}


class MemoryHistory(TypedDict):
    step: int | None
    series: list[str]
    points: list[dict[str, Any]]
    unavailable: str | None


def empty(reason: str | None = None, step: int | None = None) -> MemoryHistory:
    return {"step": step, "series": [], "points": [], "unavailable": reason}


def history_step(since: float, until: float, bucket: int | None) -> int:
    """The bucket (a multiple of 60 s, as the monitor keeps minutes) for the window: `bucket`
    rounded up to whole minutes, or one chosen from the window; never more points than the
    monitor answers."""
    wanted = bucket if bucket is not None else bucket_size(until - since)
    fewest = (until - since) / MAX_POINTS
    return max(60, 60 * math.ceil(max(wanted, fewest) / 60))


def label(name: str) -> str:
    if name.startswith("gpu") and name.endswith("_memory_used"):
        return f"GPU {name[3:-len('_memory_used')]} memory in use"
    return LABELS.get(name, name)


def _gpu_names(maxima: dict[str, float]) -> dict[str, str]:
    out = {}
    for dotted in maxima:
        parts = dotted.split(".")
        if len(parts) == 4 and parts[0] == "gpus" and parts[2:] == ["memory", "used"]:
            out[f"gpu{parts[1]}_memory_used"] = dotted
    return out


def shape(samples: list[dict[str, Any]], step: int) -> MemoryHistory:
    """`metrics.history` points as the report's memory series: {"start", name: bytes or None}."""
    points, seen = [], set()
    for sample in samples:
        maxima = sample.get("max") or {}
        wanted = {**SERIES, **_gpu_names(maxima)}
        point: dict[str, Any] = {"start": sample.get("time")}
        for name, dotted in wanted.items():
            value = maxima.get(dotted)
            point[name] = None if value is None else int(value)
            if value is not None:
                seen.add(name)
        points.append(point)
    order = [*SERIES, *sorted(n for n in seen if n not in SERIES)]
    series = [name for name in order if name in seen]
    return {"step": step, "series": series,
            "points": [{"start": p["start"], **{n: p.get(n) for n in series}} for p in points if p["start"]],
            "unavailable": None if series else NONE_KEPT}


async def fetch(client: DaemonClient, since: float, until: float, bucket: int | None) -> MemoryHistory:
    """The window's memory history; one that cannot be had says why (e.g. the monitor is off)."""
    step = history_step(since, until, bucket)
    try:
        reply = await client.call("metrics.history", since=since, until=until, step=step)
    except RpcError as exc:
        return empty(f"no monitor history: {exc.message}", step)
    return shape(reply.get("samples") or [], step)
