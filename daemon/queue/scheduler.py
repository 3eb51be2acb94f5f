"""Which queued jobs run next: priority first, FIFO within a priority, aging so `low` never
starves, and batching of jobs that share a shape."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable

from daemon.queue.jobs import PRIORITY_RANK, Job

TOP_RANK = PRIORITY_RANK["critical"]


@dataclass(frozen=True)
class Policy:
    aging_seconds: float
    max_batch: int


def effective_rank(job: Job, now: float, aging_seconds: float) -> int:
    """The job's priority, raised one level per `aging_seconds` waited, up to critical."""
    if aging_seconds <= 0:
        return job.priority
    waited = max(0.0, now - job.enqueued_at)
    return min(TOP_RANK, job.priority + int(waited // aging_seconds))


def order(queued: Iterable[Job], now: float, aging_seconds: float) -> list[Job]:
    """Start order: highest effective rank first, then submission order."""
    return sorted(queued, key=lambda job: (-effective_rank(job, now, aging_seconds), job.seq))


def position_of(job: Job, queued: Iterable[Job], now: float, aging_seconds: float) -> int:
    """1-based place in the start order (1: runs next)."""
    return order(queued, now, aging_seconds).index(job) + 1


def pick_batch(queued: Iterable[Job], now: float, policy: Policy, image_budget: int | None = None) -> list[Job]:
    """The head job plus queued jobs of the same shape, up to `max_batch` images in all.

    A `reproducible` job runs alone (a batch may change pixels by 1/255). A head job whose count
    alone exceeds the limit still runs: the worker splits it into pipeline calls of `max_batch`.
    """
    ranked = order(queued, now, policy.aging_seconds)
    if not ranked:
        return []
    head = ranked[0]
    batch = [head]
    limit = policy.max_batch if image_budget is None else max(1, min(policy.max_batch, image_budget))
    if head.reproducible or policy.max_batch <= 1:
        return batch
    images = head.count
    for job in ranked[1:]:
        if images >= limit:
            break
        if job.reproducible or job.shape() != head.shape() or images + job.count > limit:
            continue
        batch.append(job)
        images += job.count
    return batch
