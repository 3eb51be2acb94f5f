"""Which queued jobs run next: priority first, FIFO within a priority, aging so `low` never
starves, and batching of jobs that share a shape."""

from __future__ import annotations

from bisect import bisect_left, bisect_right
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass

from daemon.protocol import PRIORITIES
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


class QueueIndex:
    """Queued jobs bucketed by base priority, each bucket in submission order.

    Within a bucket, submission order is also waiting order, so the jobs that aging has lifted
    to at least a given rank are a prefix of the bucket: a job's place in the start order costs
    a few bisections per priority instead of sorting the queue on every submit.
    """

    def __init__(self) -> None:
        self._jobs: list[list[Job]] = [[] for _ in PRIORITIES]
        self._seqs: list[list[int]] = [[] for _ in PRIORITIES]
        self._enqueued: list[list[float]] = [[] for _ in PRIORITIES]
        self._per_uid: Counter[int] = Counter()

    def __len__(self) -> int:
        return sum(len(bucket) for bucket in self._jobs)

    def __iter__(self) -> Iterator[Job]:
        for bucket in self._jobs:
            yield from bucket

    def count_for(self, uid: int) -> int:
        return self._per_uid[uid]

    def oldest_enqueued(self) -> float | None:
        """When the longest-waiting job was queued: the head of some bucket (waiting order)."""
        return min((times[0] for times in self._enqueued if times), default=None)

    def add(self, job: Job) -> None:
        q = job.priority
        i = bisect_left(self._seqs[q], job.seq)
        self._seqs[q].insert(i, job.seq)
        self._enqueued[q].insert(i, job.enqueued_at)
        self._jobs[q].insert(i, job)
        self._per_uid[job.uid] += 1

    def remove(self, job: Job) -> None:
        q = job.priority
        i = bisect_left(self._seqs[q], job.seq)
        if i < len(self._seqs[q]) and self._jobs[q][i] is job:
            del self._seqs[q][i], self._enqueued[q][i], self._jobs[q][i]
            self._per_uid[job.uid] -= 1

    def _at_least(self, q: int, rank: int, now: float, aging_seconds: float) -> int:
        """How many jobs of bucket `q` have an effective rank of at least `rank` (a prefix)."""
        if rank <= q:
            return len(self._seqs[q])
        if rank > TOP_RANK or aging_seconds <= 0:
            return 0
        return bisect_right(self._enqueued[q], now - (rank - q) * aging_seconds)

    def position(self, job: Job, now: float, aging_seconds: float) -> int:
        """1-based place of a queued job in the start order (1: runs next)."""
        rank = effective_rank(job, now, aging_seconds)
        ahead = 0
        for q in range(len(PRIORITIES)):
            earlier = bisect_left(self._seqs[q], job.seq)
            above = self._at_least(q, rank + 1, now, aging_seconds)
            level = self._at_least(q, rank, now, aging_seconds)
            ahead += above + min(level, earlier) - min(above, earlier)
        return ahead + 1


def pick_batch(queued: Iterable[Job], now: float, policy: Policy, image_budget: int | None = None, *,
               can_run: Callable[[Job], bool] | None = None, holds: Callable[[Job], bool] | None = None) -> list[Job]:
    """The head job plus queued jobs of the same shape, up to `max_batch` images in all.

    For one worker of several: `can_run` leaves out the jobs it cannot run (a model that does not
    fit its device: they stay for another worker), and `holds` says which jobs' models it holds
    already. Model affinity: when the head's model is not held, the first job of the same
    effective rank whose model is, runs first instead; but only while the head has waited less
    than one aging step (`aging_seconds`), so affinity never delays a job by more than that.

    A `reproducible` job runs alone (a batch may change pixels by 1/255), and so does a job whose
    batch crashed the worker. A head job whose count
    alone exceeds the limit still runs: the worker splits it into pipeline calls of `max_batch`.
    """
    ranked = order(queued, now, policy.aging_seconds)
    if can_run is not None:
        ranked = [job for job in ranked if can_run(job)]
    if not ranked:
        return []
    head = ranked[0]
    if holds is not None and not holds(head) and now - head.enqueued_at < policy.aging_seconds:
        rank = effective_rank(head, now, policy.aging_seconds)
        for job in ranked[1:]:
            if effective_rank(job, now, policy.aging_seconds) < rank:
                break
            if holds(job):
                head = job
                break
    batch = [head]
    limit = policy.max_batch if image_budget is None else max(1, min(policy.max_batch, image_budget))
    if head.runs_alone or policy.max_batch <= 1:
        return batch
    images = head.count
    for job in ranked:
        if images >= limit:
            break
        if job is head or job.runs_alone or job.shape() != head.shape() or images + job.count > limit:
            continue
        batch.append(job)
        images += job.count
    return batch
