"""What the queue shows of a job: its fields for `/`, its sort orders, its labels."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from console.formatting import parse_time
from daemon.protocol import PRIORITIES

FINISHED = ("succeeded", "failed", "cancelled")
PRIORITY_LABEL = {"low": "low", "normal": "norm", "high": "HIGH", "critical": "CRIT"}
STATE_MARK = {"queued": "●", "running": "▶", "succeeded": "✓", "failed": "✗", "cancelled": "–"}
SORTS = ("queue", "id", "priority", "state", "user", "age", "prompt", "model")
STATE_ORDER = {"running": 0, "queued": 1, "succeeded": 2, "failed": 2, "cancelled": 2}
COLUMN_SORT = {"job_id": "id", "priority": "priority", "state": "state", "prompt": "prompt", "user": "user",
               "age": "age", "model": "model"}


def job_fields(job: dict[str, Any]) -> dict[str, str]:
    """What `/` matches against: `id:`, `state:`, `user:`, `priority:`/`pri:`, `prompt:`, `model:`,
    `box:` (a fleet's)."""
    params = job.get("params") or {}
    return {"id": job["job_id"].lower(), "state": str(job.get("state", "")), "user": str(job.get("user", "")).lower(),
            "priority": str(job.get("priority", "")), "pri": str(job.get("priority", "")),
            "prompt": str(params.get("prompt") or "").lower(), "model": str(job.get("model_id") or "").lower(),
            "box": str(job.get("box") or "").lower()}


def queue_columns(wide: bool, boxes: bool, models: bool = False) -> list[tuple[str, str, int]]:
    """The queue's columns (key, label, width; 0 takes the room left); `boxes`: a fleet member's
    console, with the box that runs or ran each job; `models`: the jobs' model, once they name more
    than one."""
    spec = [("tag", " ", 1), ("job_id", "job", 13), ("priority", "pri", 4), ("state", "state", 25 if wide else 11)]
    if boxes:
        spec.append(("box", "box", 12 if wide else 8))
    if models:
        spec.append(("model", "model", 14 if wide else 10))
    return spec + [("prompt", "prompt", 0), ("user", "user", 10 if wide else 8), ("age", "age", 6)]


def queue_order(job: dict[str, Any]) -> tuple[Any, ...]:
    """Running first, then queued by priority and age (the scheduler's order, before aging),
    then finished jobs newest first."""
    state = job.get("state", "")
    rank = STATE_ORDER.get(state, 3)
    if state == "queued":
        priority = PRIORITIES.index(job["priority"]) if job.get("priority") in PRIORITIES else 1
        return (rank, -priority, parse_time(job.get("created_at")) or 0.0)
    if state in FINISHED:
        return (rank, -(parse_time(job.get("finished_at")) or 0.0))
    return (rank, parse_time(job.get("started_at")) or 0.0)


SORT_KEYS: dict[str, Callable[[dict[str, Any]], Any]] = {
    "queue": queue_order,
    "id": lambda job: job["job_id"],
    "priority": lambda job: -PRIORITIES.index(job["priority"]) if job.get("priority") in PRIORITIES else 0,
    "state": lambda job: (STATE_ORDER.get(job.get("state", ""), 3), job.get("state", "")),
    "user": lambda job: str(job.get("user", "")),
    "age": lambda job: -(parse_time(job.get("created_at")) or 0.0),
    "prompt": lambda job: str((job.get("params") or {}).get("prompt") or ""),
    "model": lambda job: str(job.get("model_id") or ""),
}
