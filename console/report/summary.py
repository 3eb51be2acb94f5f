"""A performance report from `report.jobs` rows: no daemon needed, so it is testable on its own.

Three durations per job, from its own timestamps:
- wait: submitted to first denoising step (`started_at - created_at`; a retried job's earlier
  attempts count as waiting),
- run: first step to finished, outputs written (`finished_at - started_at`),
- latency: submitted to finished (`finished_at - created_at`), what a client waits in all.
Latency and run are of succeeded jobs; wait of every job that started.

Jobs are grouped by size and steps, and by model as well when the rows hold more than one model
(a box serving several models: their times and memory differ by far more than their sizes say).
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from console.formatting import parse_time
from console.report import METRICS
from console.report.stats import bucket_size, describe, median
from daemon.timefmt import rfc3339

if TYPE_CHECKING:
    from console.report.history import MemoryHistory

FORMAT, VERSION = "sai-report", 1
ALL = "all"


@dataclass(frozen=True)
class JobRecord:
    job_id: str
    state: str
    width: int
    height: int
    steps: int
    count: int
    created: float
    started: float | None
    finished: float
    error_kind: str | None
    batch_jobs: int | None
    batch_images: int | None
    peak_bytes_per_image: int | None
    worker_rss: int | None
    model: str | None
    """The job's model where the report groups by model, else None."""

    @classmethod
    def from_row(cls, row: dict[str, Any], by_model: bool = False) -> JobRecord:
        created, finished = parse_time(row.get("created_at")), parse_time(row.get("finished_at"))
        if created is None or finished is None:
            raise ValueError(f"job {row.get('job_id')!r} has no created_at or finished_at")
        return cls(str(row["job_id"]), str(row["state"]), int(row["width"]), int(row["height"]), int(row["steps"]),
                   int(row.get("count") or 1), created, parse_time(row.get("started_at")), finished,
                   row.get("error_kind"), row.get("batch_jobs"), row.get("batch_images"),
                   row.get("peak_bytes_per_image"), row.get("worker_rss"),
                   str(row.get("model_id") or "") if by_model else None)

    @property
    def group(self) -> str:
        return group_name(self.width, self.height, self.steps, self.model)

    @property
    def sort_key(self) -> tuple[str, int, int, int]:
        return (self.model or "", self.width * self.height, self.width, self.steps)

    def value(self, metric: str) -> float | None:
        """The job's `metric` in seconds (see the module's docstring), or None where it does not apply."""
        if metric == "wait":
            return None if self.started is None else self.started - self.created
        if self.state != "succeeded" or self.started is None:
            return None
        return self.finished - (self.started if metric == "run" else self.created)


def group_name(width: int, height: int, steps: int, model: str | None = None) -> str:
    return f"{model + ' ' if model else ''}{width}x{height} {steps} steps"


def records(rows: Iterable[dict[str, Any]]) -> list[JobRecord]:
    """Every row as a record, grouped by model too when the rows hold more than one."""
    rows = list(rows)
    by_model = len({str(row.get("model_id") or "") for row in rows}) > 1
    return [JobRecord.from_row(row, by_model) for row in rows]


def samples(jobs: list[JobRecord], metric: str) -> dict[str, list[float]]:
    """`metric` values by group, groups ordered by model (when grouped by it), pixels, then steps."""
    out: dict[str, list[float]] = {}
    for job in sorted(jobs, key=lambda j: (j.sort_key, j.finished)):
        value = job.value(metric)
        if value is not None:
            out.setdefault(job.group, []).append(value)
    return out


def throughput(jobs: list[JobRecord], bucket: int | None = None) -> dict[str, Any]:
    """Jobs finished per bucket of `bucket` seconds (aligned to the epoch), from the bucket of the
    first finish to that of the last; rates are per minute of the whole bucket."""
    if not jobs:
        return {"bucket_seconds": bucket, "buckets": []}
    first, last = min(j.finished for j in jobs), max(j.finished for j in jobs)
    size = bucket or bucket_size(last - first)
    first_slot = int(first // size)
    counts = [{"succeeded": 0, "failed": 0, "cancelled": 0, "images": 0}
              for _ in range(int(last // size) - first_slot + 1)]
    for job in jobs:
        slot = counts[int(job.finished // size) - first_slot]
        slot[job.state] += 1
        if job.state == "succeeded":
            slot["images"] += job.count
    minutes = size / 60
    return {"bucket_seconds": size, "buckets": [
        {"start": rfc3339((first_slot + i) * size), **slot, "jobs_per_minute": slot["succeeded"] / minutes,
         "images_per_minute": slot["images"] / minutes} for i, slot in enumerate(counts)]}


def failures(jobs: list[JobRecord]) -> dict[str, Any]:
    """Failure rate of the jobs that ran to an end (succeeded or failed); cancelled ones apart."""
    by_state = {state: sum(1 for j in jobs if j.state == state) for state in ("succeeded", "failed", "cancelled")}
    settled = by_state["succeeded"] + by_state["failed"]
    kinds: dict[str, int] = {}
    for job in jobs:
        if job.state == "failed":
            kinds[job.error_kind or "other"] = kinds.get(job.error_kind or "other", 0) + 1
    return {"failed": by_state["failed"], "settled": settled, "cancelled": by_state["cancelled"],
            "rate_percent": 100.0 * by_state["failed"] / settled if settled else None,
            "by_kind": dict(sorted(kinds.items(), key=lambda kv: (-kv[1], kv[0])))}


def memory(jobs: list[JobRecord]) -> list[dict[str, Any]]:
    """Per group (and "all"): the worker's largest and median peak per image, its largest RSS
    after a batch, and the largest batch, over the jobs whose batch reported figures."""
    groups: dict[str, list[JobRecord]] = {}
    for job in sorted(jobs, key=lambda j: j.sort_key):
        groups.setdefault(job.group, []).append(job)
    groups[ALL] = list(jobs)
    out = []
    for name, members in groups.items():
        peaks = [j.peak_bytes_per_image for j in members if j.peak_bytes_per_image is not None]
        rss = [j.worker_rss for j in members if j.worker_rss is not None]
        batches = [j.batch_images for j in members if j.batch_images is not None]
        out.append({"group": name, "measured": len(peaks), "peak_bytes_per_image_max": max(peaks, default=None),
                    "peak_bytes_per_image_p50": median(peaks), "worker_rss_max": max(rss, default=None),
                    "batch_images_max": max(batches, default=None)})
    return out


def durations(jobs: list[JobRecord]) -> list[dict[str, Any]]:
    """Latency, run and wait summaries per group, then "all"."""
    per_metric = {metric: samples(jobs, metric) for metric in METRICS}
    names = list(dict.fromkeys(g for metric in METRICS for g in per_metric[metric]))
    rows = []
    for name in names:
        first = next(j for j in jobs if j.group == name)
        figures = {metric: describe(per_metric[metric].get(name, [])) for metric in METRICS}
        rows.append({"group": name, "model": first.model, "width": first.width, "height": first.height,
                     "steps": first.steps, **figures})
    rows.append({"group": ALL, "model": None, "width": None, "height": None, "steps": None,
                 **{metric: describe([v for vs in per_metric[metric].values() for v in vs]) for metric in METRICS}})
    return rows


def build(rows: list[dict[str, Any]], since: float, until: float, bucket: int | None = None,
          source: str = "", memory_history: MemoryHistory | None = None) -> dict[str, Any]:
    """The whole report: what `--format json` prints and what `--compare` reads back.
    `memory_history` is `console.report.history.fetch`'s answer (None: it was not asked for)."""
    jobs = records(rows)
    fail = failures(jobs)
    return {
        "format": FORMAT, "version": VERSION, "source": source, "generated_at": rfc3339(time.time()),
        "since": rfc3339(since), "until": rfc3339(until),
        "counts": {"finished": len(jobs), "succeeded": fail["settled"] - fail["failed"], "failed": fail["failed"],
                   "cancelled": fail["cancelled"]},
        "overall_jobs_per_minute": ((fail["settled"] - fail["failed"]) / ((until - since) / 60)
                                    if until > since else None),
        "groups": durations(jobs),
        "throughput": throughput(jobs, bucket),
        "failures": fail,
        "memory": memory(jobs),
        "memory_history": memory_history or {"step": None, "series": [], "points": [],
                                             "unavailable": "the monitor history was not asked for"},
        "jobs": rows,
    }


def load(data: Any, origin: str) -> dict[str, Any]:
    """A report read back from a file, checked to be one (ValueError saying what is wrong)."""
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        kind = data.get("format") if isinstance(data, dict) else type(data).__name__
        raise ValueError(f"{origin} is not a report written by `sai report --format json` (format: {kind!r})")
    if data.get("version") != VERSION:
        raise ValueError(f"{origin} is a version {data.get('version')!r} report; this sai reads version {VERSION}")
    if not isinstance(data.get("jobs"), list):
        raise ValueError(f"{origin} has no job rows (`jobs`)")
    try:
        records(data["jobs"])
    except (KeyError, TypeError, ValueError) as exc:
        raise ValueError(f"{origin} has a job row it cannot read: {exc}") from None
    return data
