"""The service's own metrics (RED: rate, errors, duration) beside the monitor's host/GPU gauges.

Counters and histograms are prometheus_client objects in the monitor's registry (one per daemon,
never the process-wide default: several daemons share a test process). They are fed from what
the daemon already reports, so the queue and the dispatcher carry no metrics code:

- the event bus (`EventBus.listen`): `job` state changes (finishes, first starts), `audit`
  entries (submits; every entry counted), `queue` worker events (crashes, restarts);
- the dispatcher's batch figures (generation time per image), chained in front of the job history;
- the submit method's refusals (`submit_refused`), since rate-limit and disk refusals are not audited.

Queue depth by state and priority, worker up, and the audit log's size and newest checkpoint are
read at scrape time (`StateCollector`), so they are never stale. Every label has a bounded set of
values: states, priorities, outcomes, refusal reasons and restart causes are fixed sets here, and
`model` is the configured model's id (one per daemon); never a job id, user or prompt.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, InfoMetricFamily
from prometheus_client.metrics_core import Metric
from prometheus_client.registry import Collector

from daemon import __version__
from daemon.protocol import INVALID_PARAMS, PRIORITIES, RATE_LIMITED, REFUSED_BY_POLICY, UNAVAILABLE, RpcError
from daemon.queue.jobs import CANCELLED, FAILED, QUEUED, RUNNING, SUCCEEDED, Job
from daemon.timefmt import parse_rfc3339

if TYPE_CHECKING:
    from daemon.audit.log import AuditLog
    from daemon.events import EventBus
    from daemon.queue.manager import QueueManager
    from daemon.worker.supervisor import WorkerSupervisor

log = logging.getLogger("sai.monitor.metrics")

OUTCOMES = (SUCCEEDED, FAILED, CANCELLED)
REFUSAL_REASONS = ("invalid", "policy", "rate_limit", "queue_full", "memory", "disk_space", "other")
RESTART_CAUSES = ("crash", "leak", "operator")
QUEUE_STATES = (QUEUED, RUNNING)

QUEUE_WAIT_BUCKETS = (0.1, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1200, 1800, 3600, 7200)
"""Submit to first start. An idle queue starts a job within a fraction of a second (the first
buckets tell a healthy daemon from a slow hand-over); behind a backlog of a night's batch jobs,
waits run to an hour or two, where the buckets thin out: there the order of magnitude is what counts."""

GENERATION_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2, 3, 5, 8, 13, 20, 30, 60, 120, 300, 600)
"""Worker time per image of a batch. A small model on a GPU, or the test model on a CPU, takes
tens of milliseconds; SDXL-class models a few seconds on a data-centre GPU, tens on a small one,
and minutes on a CPU. Dense from 1 to 30 s, where a regression (a slower driver, a bigger step
count by default) shows as a shift of one or two buckets."""

JOB_DURATION_BUCKETS = (0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1200, 1800, 3600, 7200, 14400)
"""Submit to finish (queue wait, generation, writing the outputs): the time a user waits, from a
second for a small job on an idle daemon to hours for a low-priority job behind a backlog."""


def refusal_reason(exc: RpcError) -> str:
    """The fixed reason label for a refused submit, from the error's code and data."""
    data = exc.data if isinstance(exc.data, dict) else {}
    if exc.code == INVALID_PARAMS:
        return "invalid"
    if exc.code == REFUSED_BY_POLICY:
        return "policy"
    if exc.code == RATE_LIMITED:
        return "queue_full" if "queued" in data else "rate_limit"
    if exc.code == UNAVAILABLE and data.get("reason") in ("memory", "disk"):
        return "memory" if data["reason"] == "memory" else "disk_space"
    return "other"


def restart_cause(reason: str) -> str:
    """`worker.restarted` reasons: the leak detector's start with "leak", the rest are an operator's."""
    return "leak" if reason.startswith("leak") else "operator"


@dataclass
class DaemonState:
    """What the scrape-time collector reads; each callable is cheap and safe from the exporter's thread."""

    jobs: Callable[[], Iterable[Job]]
    paused: Callable[[], bool]
    workers: Callable[[], list[tuple[str, str, bool]]]
    """(name, device, alive) of every worker."""
    audit_size: Callable[[], int]
    audit_checkpointed: Callable[[], tuple[int, float | None]]
    audit_checkpoints: Callable[[], int]
    version: str


class StateCollector(Collector):
    """Gauges read at scrape time; nothing until the daemon attaches its state."""

    def __init__(self) -> None:
        self.state: DaemonState | None = None

    def read_from(self, state: DaemonState) -> None:
        """Read the gauges from `state` at every scrape from now on."""
        self.state = state

    def collect(self) -> Iterator[Metric]:
        state = self.state
        if state is None:
            return
        depth = GaugeMetricFamily("sai_queue_jobs", "Jobs in the queue now, by state (queued: waiting or handed "
                                  "to the worker; running) and priority.", labels=["state", "priority"])
        counts = {(s, p): 0 for s in QUEUE_STATES for p in PRIORITIES}
        for job in list(state.jobs()):
            key = (job.state, job.priority_name)
            if key in counts:
                counts[key] += 1
        for (job_state, priority), n in counts.items():
            depth.add_metric([job_state, priority], n)
        yield depth
        yield GaugeMetricFamily("sai_queue_paused", "1 while the queue is paused (no new job starts), else 0.",
                                value=1 if state.paused() else 0)
        up = GaugeMetricFamily("sai_worker_up", "1 while a generation worker process is alive, else 0, by worker "
                               "and device.", labels=["worker", "device"])
        for name, device, alive in state.workers():
            up.add_metric([name, device], 1 if alive else 0)
        yield up
        yield GaugeMetricFamily("sai_audit_log_entries", "Entries in the signed audit log.",
                                value=state.audit_size())
        covered, at = state.audit_checkpointed()
        yield GaugeMetricFamily("sai_audit_checkpoint_entries", "Entries the newest signed checkpoint covers.",
                                value=covered)
        if at is not None:
            yield GaugeMetricFamily("sai_audit_last_checkpoint_timestamp_seconds",
                                    "When the newest audit checkpoint was written (epoch).", value=at)
        checkpoints = CounterMetricFamily("sai_audit_checkpoints", "Audit checkpoints written since the daemon "
                                          "started.")
        checkpoints.add_metric([], state.audit_checkpoints())
        yield checkpoints
        yield InfoMetricFamily("sai_build", "The daemon's version.", value={"version": state.version})


class ServiceMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.state = StateCollector()
        registry.register(self.state)
        self.submitted = Counter("sai_jobs_submitted", "Jobs accepted into the queue, by priority.",
                                 ["priority"], registry=registry)
        self.finished = Counter("sai_jobs_finished", "Jobs finished, by outcome (succeeded, failed, cancelled) "
                                "and model.", ["outcome", "model"], registry=registry)
        self.images = Counter("sai_images_generated", "Images generated and written, by model.", ["model"],
                              registry=registry)
        self.refused = Counter("sai_job_submits_refused", "Submits refused, by reason (invalid, policy, "
                               "rate_limit, queue_full, memory, disk_space, other).", ["reason"], registry=registry)
        self.queue_wait = Histogram("sai_job_queue_wait_seconds", "Time from submit to a job's first start, "
                                    "by priority.", ["priority"], buckets=QUEUE_WAIT_BUCKETS, registry=registry)
        self.generation = Histogram("sai_image_generation_seconds", "Worker time per image of a batch that "
                                    "succeeded, by model.", ["model"], buckets=GENERATION_BUCKETS, registry=registry)
        self.duration = Histogram("sai_job_duration_seconds", "Time from submit to finish (end to end), by "
                                  "outcome.", ["outcome"], buckets=JOB_DURATION_BUCKETS, registry=registry)
        self.restarts = Counter("sai_worker_restarts", "Worker restarts, by cause (crash: it died and is "
                                "started again; leak: memory growth; operator: sai worker restart), by worker.",
                                ["cause", "worker"], registry=registry)
        self.audit_entries = Counter("sai_audit_entries", "Entries appended to the audit log since the daemon "
                                     "started.", registry=registry)
        for reason in REFUSAL_REASONS:
            self.refused.labels(reason)
        for priority in PRIORITIES:
            self.submitted.labels(priority)
        for outcome in OUTCOMES:
            self.duration.labels(outcome)

    # -- what feeds them ----------------------------------------------------------------------

    def on_event(self, topic: str, data: dict[str, Any]) -> None:
        """An event bus listener for the `job`, `audit` and `queue` topics."""
        kind = data.get("kind")
        if topic == "job" and kind == "state":
            self._job_state(data.get("job") or {})
        elif topic == "audit":
            self.audit_entries.inc()
            if data.get("action") == "job.submit":
                priority = (data.get("details") or {}).get("priority")
                if priority in PRIORITIES:
                    self.submitted.labels(priority).inc()
        elif topic == "queue" and kind == "worker.crashed":
            self.restarts.labels("crash", _worker_name(data)).inc()
        elif topic == "queue" and kind == "worker.restarted":
            self.restarts.labels(restart_cause(str(data.get("reason") or "")), _worker_name(data)).inc()

    def know_workers(self, names: Iterable[str]) -> None:
        """Every worker's restart counters exist (at 0) from the start."""
        for name in names:
            for cause in RESTART_CAUSES:
                self.restarts.labels(cause, name)

    def _job_state(self, job: dict[str, Any]) -> None:
        state, model = job.get("state"), str(job.get("model_id") or "unknown")
        created = _epoch(job.get("created_at"))
        if state == RUNNING and job.get("attempts") == 1 and job.get("priority") in PRIORITIES:
            started = _epoch(job.get("started_at"))
            if started is not None and created is not None:
                self.queue_wait.labels(job["priority"]).observe(max(0.0, started - created))
        elif state in OUTCOMES:
            self.finished.labels(state, model).inc()
            if state == SUCCEEDED:
                self.images.labels(model).inc(len(job.get("outputs") or ()))
            finished = _epoch(job.get("finished_at"))
            if finished is not None and created is not None:
                self.duration.labels(state).observe(max(0.0, finished - created))

    def batch_done(self, jobs: list[Job], figures: dict[str, Any]) -> None:
        """A batch's figures from the dispatcher. Only a batch that succeeded reports the worker's
        peak memory per image (`peak_bytes_per_image`, None when unmeasured): a failed one lacks the
        key and is left out, its time being no generation time."""
        images = int(figures.get("images") or 0)
        starts = [job.started_at for job in jobs if job.started_at is not None]
        if "peak_bytes_per_image" not in figures or images <= 0 or not starts:
            return
        model = str(jobs[0].model_id or "unknown")
        self.generation.labels(model).observe(max(0.0, time.time() - min(starts)) / images)

    def submit_refused(self, exc: RpcError) -> None:
        self.refused.labels(refusal_reason(exc)).inc()


def _worker_name(data: dict[str, Any]) -> str:
    worker = data.get("worker")
    return str(worker.get("name") or "") if isinstance(worker, dict) else ""


def _epoch(text: Any) -> float | None:
    return parse_rfc3339(text) if isinstance(text, str) and text else None


BatchFigures = Callable[[list[Job], dict[str, Any]], Awaitable[None]]


def chain_batch_figures(metrics: ServiceMetrics, keep: BatchFigures) -> BatchFigures:
    """The dispatcher's batch-figures callback: the metrics first, then what kept them before."""

    async def figures(jobs: list[Job], data: dict[str, Any]) -> None:
        try:
            metrics.batch_done(jobs, data)
        except Exception:
            log.exception("batch figures not counted in the metrics")
        await keep(jobs, data)

    return figures


def attach(metrics: ServiceMetrics, bus: EventBus, queue: QueueManager, workers: list[WorkerSupervisor],
           audit: AuditLog) -> None:
    """Feed `metrics` from the daemon's parts: events from its bus, scrape-time state from its queue,
    worker and audit log. (The dispatcher's batch figures come through `chain_batch_figures`, given
    to the dispatcher when it is built.)"""
    metrics.state.read_from(DaemonState(
        jobs=lambda: list(queue.active.values()), paused=lambda: queue.paused,
        workers=lambda: [(worker.name, worker.device, worker.alive) for worker in workers],
        audit_size=lambda: audit.size, audit_checkpointed=lambda: audit.checkpointed,
        audit_checkpoints=lambda: audit.stats["checkpoints"], version=__version__))
    metrics.know_workers(worker.name for worker in workers)
    bus.listen({"job", "audit", "queue"}, metrics.on_event)
