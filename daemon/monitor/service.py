"""The Monitor: samples on a timer, keeps the ring and the history, runs the alert rules, serves
the figures to the API, the `metrics` topic and Prometheus.

The daemon makes one with `await Monitor.open(...)`, calls `start()` once its parts are up and
`await close()` at shutdown. What the monitor needs from the daemon comes in as callables, read on
the event loop each sample: the worker's pid, the worker's last memory report, the oldest queued
job's age. Sampling itself (psutil, NVML) runs in the monitor's own thread, so a thread pool busy
with outputs never delays a sample (and so an alert).
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import shutil
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import Executor, ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, Any

import aiosqlite

from daemon.config import Config
from daemon.events import EventBus
from daemon.monitor.alerts import AlertBook, Audit
from daemon.monitor.gpu import GpuProbe
from daemon.monitor.history import History, flatten, parse_time
from daemon.monitor.prometheus import Exporter, registry_for, render
from daemon.monitor.ring import Ring
from daemon.monitor.rules import GIB, LEVELS, Evaluator, rules_from_config
from daemon.monitor.sampler import Inputs, Sampler, WorkerInput
from daemon.monitor.service_metrics import ServiceMetrics, attach
from daemon.queue.jobs import FAILED, SUCCEEDED
from daemon.timefmt import rfc3339

if TYPE_CHECKING:
    from daemon.audit.log import AuditLog
    from daemon.queue.manager import QueueManager
    from daemon.worker.supervisor import WorkerSupervisor

log = logging.getLogger("sai.monitor")

DB_NAME = "metrics.sqlite3"
ERROR_LOG_EVERY = 60.0


async def _read(source: Callable[[], Any] | None) -> Any:
    if source is None:
        return None
    value = source()
    return await value if inspect.isawaitable(value) else value


def _graphed(name: str) -> bool:
    """Series worth a column in the snapshot's ring: totals (constant; the latest sample has them) and
    GPU free memory (total minus used) are left out, to keep the reply well under the 1 MiB line limit."""
    return not name.endswith((".total", ".available")) and not (name.startswith("gpus.") and name.endswith(".free"))


class Monitor:
    def __init__(self, config: Config, outputs_dir: Path, bus: EventBus, db: aiosqlite.Connection,
                 history: History, alerts: AlertBook, sampler: Sampler, executor: Executor, own_executor: bool,
                 sources: dict[str, Callable[[], Any] | None], clock: Callable[[], float]) -> None:
        self._disk_free: tuple[float, int] | None = None
        self.settings = config.monitor
        self.limits = config.alerts
        self.interval = float(self.settings.interval)
        self.outputs_dir = Path(outputs_dir)
        self.bus = bus
        self.db = db
        self.history_store = history
        self.alerts = alerts
        self.sampler = sampler
        self.executor = executor
        self._own_executor = own_executor
        self.sources = sources
        self.clock = clock
        self.ring = Ring(self.settings.ring_seconds, self.interval)
        self.evaluator = Evaluator(rules_from_config(self.limits), self.limits.hysteresis,
                                   self.limits.raise_after_samples, self.limits.clear_after_samples)
        self.outcomes: deque[tuple[float, bool]] = deque()
        self.registry = registry_for(lambda: (self.ring.latest(), self.alerts.counts))
        self.service = ServiceMetrics(self.registry)
        self.exporter: Exporter | None = None
        self._task: asyncio.Task[None] | None = None
        self._tick_lock = asyncio.Lock()
        self._error_logged_at = float("-inf")
        self.errors = 0
        self.samples_taken = 0
        self._alerts_pruned_at = clock()
        self.closed = False

    @classmethod
    async def open(cls, config: Config, state_dir: Path, outputs_dir: Path, bus: EventBus,
                   worker_pid: Callable[[], int | None] | None = None,
                   worker_memory: Callable[[], dict[str, Any] | None] | None = None,
                   queue_wait: Callable[[], Any] | None = None,
                   audit: Audit | None = None, *,
                   workers: Callable[[], list[WorkerInput]] | None = None,
                   clock: Callable[[], float] = time.time, executor: Executor | None = None,
                   nvml: Any = None) -> Monitor:
        """Open state/metrics.sqlite3 (WAL), load open alerts, set up NVML. Nothing runs until `start()`.

        `queue_wait` returns the oldest queued job's age in seconds, or None when nothing waits (it may
        be async). `audit(actor | None, action, subject, details)` is awaited for alert.raise /
        alert.clear / alert.ack. `nvml` replaces the pynvml module (tests)."""
        rules_from_config(config.alerts)  # a bad pair of levels stops start-up before anything opens
        db = await aiosqlite.connect(Path(state_dir) / DB_NAME)
        own = executor is None
        pool = executor or ThreadPoolExecutor(max_workers=1, thread_name_prefix="sai-monitor")
        try:
            await db.execute("PRAGMA journal_mode=WAL")
            await db.execute("PRAGMA synchronous=NORMAL")
            history = await History.open(db, config.monitor.history_days, clock)
            alerts = await AlertBook.open(db, bus, audit, clock, config.alerts.retain_days)
            loop = asyncio.get_running_loop()
            gpu = GpuProbe(nvml, config.monitor.nvml_slow_interval)
            sampler = await loop.run_in_executor(
                pool, lambda: Sampler(Path(outputs_dir), gpu, float(config.monitor.interval)))
        except BaseException:
            await db.close()
            if own:
                pool.shutdown(wait=False)
            raise
        monitor = cls(config, Path(outputs_dir), bus, db, history, alerts, sampler, pool, own,
                      {"worker_pid": worker_pid, "worker_memory": worker_memory, "queue_wait": queue_wait,
                       "workers": workers}, clock)
        for key, record in list(alerts.open_alerts.items()):
            if record["rule"]:
                rule = next((r for r in monitor.evaluator.rules if r.name == record["rule"]), None)
                if rule is None or not rule.levels:
                    await alerts.clear(key, reason="rule turned off in the configuration")
                else:
                    monitor.evaluator.seed(key, record["severity"])
        return monitor

    # -- running ------------------------------------------------------------------------------

    def start(self) -> None:
        """Start sampling (unless `monitor.enabled` is false) and the exporter (if `monitor.listen`)."""
        if self.settings.listen:
            self.exporter = Exporter(self.settings.listen, self.registry)
            try:
                self.exporter.start()
            except OSError as exc:
                message = f"Prometheus exporter cannot listen on {self.settings.listen}: {exc.strerror or exc}"
                log.error("%s", message)
                self.exporter = None
                asyncio.get_running_loop().create_task(
                    self.alerts.raise_alert("monitor.exporter", "warning", message, {"listen": self.settings.listen}))
        if self.settings.enabled and self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._run(), name="sai-monitor")

    @property
    def sampling(self) -> asyncio.Task[None] | None:
        """The task that samples and runs the alert rules (None before `start()` or when disabled)."""
        return self._task

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        next_at = loop.time()
        while True:
            try:
                await self.tick()
            except Exception:
                self.errors += 1
                if loop.time() - self._error_logged_at >= ERROR_LOG_EVERY:
                    self._error_logged_at = loop.time()
                    log.exception("monitor sample failed (%d so far; logged at most once a minute)", self.errors)
            next_at += self.interval
            delay = next_at - loop.time()
            if delay < 0:  # fell behind (a stalled loop): skip the missed ticks rather than burst
                next_at, delay = loop.time(), 0.0
            await asyncio.sleep(delay)

    async def _collect(self) -> dict[str, Any]:
        ts = self.clock()
        inputs = Inputs(worker_pid=await _read(self.sources["worker_pid"]),
                        worker_memory=await _read(self.sources["worker_memory"]),
                        queue_wait=await _read(self.sources["queue_wait"]),
                        jobs=self.job_summary(ts), workers=tuple(await _read(self.sources["workers"]) or ()))
        return await asyncio.get_running_loop().run_in_executor(self.executor, self.sampler.collect, ts, inputs)

    async def tick(self) -> dict[str, Any]:
        """One sample: collect, keep, evaluate the rules, publish, fold into the history."""
        async with self._tick_lock:
            sample = await self._collect()
            self.ring.append(sample)
            self.samples_taken += 1
            await self.evaluate(sample)
            if self.bus.wants("metrics"):
                self.bus.publish("metrics", sample)
            await self.history_store.add(sample)
            if sample["ts"] - self._alerts_pruned_at >= 3600:
                self._alerts_pruned_at = sample["ts"]
                await self.alerts.prune()
            return sample

    async def evaluate(self, sample: dict[str, Any]) -> None:
        """Apply the alert rules to one sample (tick() does; tests feed samples of their own)."""
        ts = sample["ts"]
        changes, standing = self.evaluator.evaluate(sample)
        for change in changes:
            rule, value = change.rule, change.value
            if change.level == 0:
                shown = "no value" if value is None else f"{value:.2f}"
                await self.alerts.clear(change.key, ts=ts, reason=f"{rule.title} back to {shown}")
                continue
            threshold = dict(rule.levels)[change.level]
            await self.alerts.raise_alert(
                change.key, LEVELS[change.level], rule.message(change.subject, value or 0.0, change.level),
                {"value": value, "threshold": threshold, "unit": rule.unit, "lower_is_worse": rule.lower_is_worse},
                rule=rule.name, subject=change.subject or None, ts=ts, repeat=False)
        for key, value in standing:
            self.alerts.seen(key, ts, None if value is None else {"value": value})
        await self.alerts.flush_seen()

    async def close(self) -> None:
        """Stop sampling and the exporter, write the current minute and last-seen times, close the database."""
        if self.closed:
            return
        self.closed = True
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None
        loop = asyncio.get_running_loop()
        if self.exporter is not None:
            await loop.run_in_executor(self.executor, self.exporter.stop)
            self.exporter = None
        try:
            await self.history_store.flush()
            await self.alerts.flush_seen(force=True)
        finally:
            await self.db.close()
            await loop.run_in_executor(self.executor, self.sampler.gpu.close)
            if self._own_executor:
                self.executor.shutdown(wait=True)

    # -- what the daemon feeds in -------------------------------------------------------------

    def attach(self, queue: QueueManager, workers: list[WorkerSupervisor], audit: AuditLog) -> None:
        """Feed the service metrics (daemon.monitor.service_metrics) from the daemon's parts, once
        they are open (until then the exposition carries the host figures only), and the failure-rate
        rule from the `job` events of jobs that succeed or fail (the queue never calls up here)."""
        attach(self.service, self.bus, queue, workers, audit)
        self.bus.listen({"job"}, self._job_event)

    def _job_event(self, topic: str, data: dict[str, Any]) -> None:
        if data.get("kind") == "state" and data.get("state") in (SUCCEEDED, FAILED):
            self.record_job_outcome(data["state"] == SUCCEEDED)

    def record_job_outcome(self, succeeded: bool) -> None:
        """A job finished (True) or failed (False); feeds the failure-rate rule. Cancelled jobs: do not call."""
        self.outcomes.append((self.clock(), bool(succeeded)))

    def job_summary(self, now: float | None = None) -> dict[str, Any]:
        now = self.clock() if now is None else now
        window = float(self.limits.failure_rate_window_seconds)
        while self.outcomes and self.outcomes[0][0] < now - window:
            self.outcomes.popleft()
        finished = len(self.outcomes)
        failed = sum(1 for _, ok in self.outcomes if not ok)
        rate = round(100.0 * failed / finished, 1) if finished >= self.limits.failure_rate_min_jobs else None
        return {"finished": finished, "failed": failed, "failure_rate_percent": rate, "window_seconds": window}

    def disk_refusal(self, max_age: float = 0.5) -> str | None:
        """Why a new job must be refused for lack of disk (free space under the outputs directory
        below `alerts.disk_refuse_below_gib`), or None. The free space is read at most every
        `max_age` seconds: a submit burst costs one statvfs, not one per submit."""
        floor = float(self.limits.disk_refuse_below_gib)
        if floor <= 0:
            return None
        now = time.monotonic()
        if self._disk_free is None or now - self._disk_free[0] > max_age:
            path = self.outputs_dir
            while not path.exists() and path != path.parent:
                path = path.parent
            self._disk_free = (now, shutil.disk_usage(path).free)
        free = self._disk_free[1]
        if free >= floor * GIB:
            return None
        return (f"not enough free disk space for outputs: {free / GIB:.2f} GiB free under {self.outputs_dir}; "
                f"new jobs are refused below {floor:g} GiB (alerts.disk_refuse_below_gib)")

    # -- what the API reads -------------------------------------------------------------------

    def latest(self) -> dict[str, Any] | None:
        return self.ring.latest()

    async def snapshot(self, history_seconds: float | None = None) -> dict[str, Any]:
        """The latest sample, the open alert counts and the ring as columns:
        {"ts": [...], "series": {"host.memory.percent": [...], ...}} (None where a sample lacks it).
        `history_seconds=0` leaves the ring out. Samples once if none was taken yet."""
        sample = self.ring.latest()
        if sample is None:
            async with self._tick_lock:
                sample = self.ring.latest() or await self._collect()
        newest = sample["ts"]
        since = None if history_seconds is None else newest - history_seconds
        ring = [] if history_seconds == 0 else self.ring.since(since)
        flats = [flatten(s) for s in ring]
        names = sorted({name for flat in flats for name in flat if _graphed(name)})
        return {**sample, "enabled": bool(self.settings.enabled), "alerts": dict(self.alerts.counts),
                "history": {"interval": self.interval, "capacity": self.ring.capacity,
                            "ts": [s["ts"] for s in ring],
                            "series": {name: [flat.get(name) for flat in flats] for name in names}}}

    async def history(self, since: float | str | None = None, until: float | str | None = None,
                      step: int = 60) -> dict[str, Any]:
        """Per-`step` aggregates (step a multiple of 60 s). since/until: epoch seconds or RFC 3339;
        until defaults to now, since to an hour before until. ValueError on bad values."""
        until_ts = self.clock() if until is None else parse_time(until, "until")
        since_ts = until_ts - 3600 if since is None else parse_time(since, "since")
        points = await self.history_store.query(since_ts, until_ts, step)
        return {"since": rfc3339(since_ts), "until": rfc3339(until_ts), "step": step, "samples": points}

    def prometheus_text(self) -> str:
        return render(self.registry)
