"""Building the daemon's parts, in order, each given what it uses when it is made.

`assemble` opens the parts bottom-up, so every collaborator exists before the part that uses it:
keys, then the audit log, the job store and history, the worker supervisors (one per device) and
their memory models, the queue, the monitor, the reactions, the lanes (one per worker) and the
box that feeds them from the queue (daemon.dispatch). Nothing is assigned into a part after it
is built. Where a lower part must tell an upper one something, it does so through a hook it was
given (the dispatcher's `WorkerEvents`) or an event on the bus (`job` events for the monitor's
failure rate, `alarm` events for alerts from parts built before the alert book: daemon.alarms).

The lifecycle (`startup`, `serve`, `shutdown`, signals) stays in daemon.service.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Awaitable, Callable
from concurrent.futures import Executor
from contextlib import AsyncExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from daemon import __version__
from daemon.alarms import Alarm, raise_alarm
from daemon.audit.anchor import FILE_NAME as ANCHOR_FILE
from daemon.audit.anchor import Trust, unrecorded_jobs_reason
from daemon.audit.entry import key_id
from daemon.audit.log import AuditLog
from daemon.auth import Peer
from daemon.background import BackgroundTasks
from daemon.catalog import ModelCatalog
from daemon.config import Config
from daemon.crypto.envelope import PromptSealer
from daemon.crypto.keys import KeyStore
from daemon.crypto.passphrase import PassphraseSources
from daemon.crypto.prompt_mac import PromptMac
from daemon.dispatch import Box, Lane, OutputWriter
from daemon.dispatch.fleet_box import FleetBox
from daemon.events import EventBus
from daemon.fleet import prompt_key
from daemon.fleet.boxes import BoxInfo
from daemon.fleet.checkpoints import CheckpointBoard
from daemon.fleet.connection import Database
from daemon.fleet.errors import StaleAttempt
from daemon.fleet.jobs import FleetQueue
from daemon.fleet.manager import FleetManager
from daemon.fleet.member import FleetMember
from daemon.fleet.wakeup import Wakeup
from daemon.fleet.witness import Witness, fork_alarm
from daemon.monitor.gpu import count_gpus
from daemon.monitor.sampler import WorkerInput
from daemon.monitor.service import Monitor
from daemon.monitor.service_metrics import chain_batch_figures
from daemon.outputs.pipeline import OutputSettings
from daemon.outputs.pool import open_pool, pool_size
from daemon.outputs.sink import KeyMaintenance, ProtectedSink
from daemon.queue.admission import Admission
from daemon.queue.history import JobHistory
from daemon.queue.manager import QueueManager
from daemon.queue.store import JobStore
from daemon.reactions import Reactions
from daemon.safefiles import ensure_dir, remove_stale_temps
from daemon.schema import parse_devices
from daemon.worker.devices import resolve
from daemon.worker.memory_model import AnyDevice, MemoryModel
from daemon.worker.supervisor import WorkerSupervisor

log = logging.getLogger("sai.daemon")

RunBlocking = Callable[..., Awaitable[Any]]


@dataclass(frozen=True)
class Site:
    """Where this daemon lives and what it calls itself."""

    state_dir: Path
    outputs_dir: Path
    socket_path: Path
    installation: str
    embedded: bool


class ActionRecorder:
    """Records a state change in the audit log: the one audit append every part is given."""

    def __init__(self, log: AuditLog, own_peer: Peer) -> None:
        self.log = log
        self.own_peer = own_peer

    async def __call__(self, peer: Peer | dict[str, Any] | None, action: str, subject: str,
                       details: dict[str, Any]) -> None:
        """`peer` is who asked (a Peer, or an actor dict as the monitor keeps it); None means the daemon."""
        actor = peer if isinstance(peer, dict) else (peer or self.own_peer).actor()
        await self.log.append(actor, action, subject, details)


@dataclass(frozen=True)
class Parts:
    keystore: KeyStore
    output_settings: OutputSettings
    audit: AuditLog
    record: ActionRecorder
    store: JobStore
    job_history: JobHistory
    key_maintenance: KeyMaintenance
    worker: WorkerSupervisor
    """The first worker (the one of a daemon with one device); `dispatcher.lanes` has them all."""
    queue: QueueManager
    monitor: Monitor
    reactions: Reactions
    dispatcher: Box
    fleet: FleetMember | None = None
    """This box in the fleet (`[fleet] database` set): registered and heartbeating; None on a single box."""


async def assemble(config: Config, site: Site, *, bus: EventBus, background: BackgroundTasks,
                   executor: Executor, run_blocking: RunBlocking, passphrases: PassphraseSources,
                   own_peer: Peer, opened: AsyncExitStack) -> Parts:
    """Open every part in order. Each part that must be closed is pushed on `opened` as soon as it
    is open, so the caller closes exactly what was opened when a later step fails."""
    cfg = config
    output_settings = OutputSettings.from_config(cfg)
    keys_dir = site.state_dir / "keys"
    keys_created = KeyStore.is_sealed(keys_dir) is None  # first start: for the audit log
    passphrase = passphrases.resolve(keys_dir, seal_new=cfg.keys.sealed)
    keystore: KeyStore = await run_blocking(
        lambda: KeyStore.open(keys_dir, passphrase, scrypt_log2_n=cfg.keys.scrypt_log2_n))
    ensure_dir(site.outputs_dir, 0o700)
    removed = await run_blocking(remove_stale_temps, site.outputs_dir)
    if removed:
        log.warning("removed %d unfinished temp file(s) from %s", len(removed), site.outputs_dir)

    audit = await _open_audit(cfg, site, keystore, bus, run_blocking, opened)
    background.watch(audit.committer, "audit committer",
                     "audited actions (submit, cancel, pause) and job finishes", essential=True)
    if keystore.previous_signing_key is not None:  # the log now announces the current key
        await run_blocking(keystore.retire_previous_signing_key)
    audit.subscribe(lambda entry: bus.publish("audit", entry) if bus.wants("audit") else None)
    record = ActionRecorder(audit, own_peer)
    if keys_created:
        await record(None, "keys.create", keystore.signing_kid,
                     {"kek_id": keystore.current_kek_id, "signing_kid": keystore.signing_kid})
    await record_certificate_events(keystore, record)
    loop = asyncio.get_running_loop()
    keystore.c2pa.on_event = lambda: asyncio.run_coroutine_threadsafe(record_certificate_events(keystore, record),
                                                                      loop)
    await record(None, "daemon.start", site.installation,
                 {"version": __version__, "pid": os.getpid(), "socket": str(site.socket_path),
                  "embedded": site.embedded})

    store = await JobStore.open(site.state_dir / "jobs.sqlite3", PromptSealer(keystore),
                                on_stall=Alarm(bus, "jobs_db.locked"))
    opened.push_async_callback(store.close)
    background.watch(store.writer, "job store committer",
                     "saving jobs (submits, state changes, finishes)", essential=True)
    job_history = await JobHistory.open(site.state_dir / "jobs.sqlite3")
    opened.push_async_callback(job_history.close)
    key_maintenance = KeyMaintenance(keystore, store, site.outputs_dir, run_blocking)
    await key_maintenance.resume_prompts()

    models = ModelCatalog(cfg, site.state_dir, record=record, publish=bus.publish)
    await run_blocking(models.check_paths)
    workers = _workers(cfg, site, background, models)
    worker = workers[0]
    memories = [MemoryModel() for _ in workers]  # one per device: each lane feeds its own, sizes its batches by it
    queue_memory = memories[0] if len(workers) == 1 else AnyDevice(
        [(w.name, m, w.capacity) for w, m in zip(workers, memories)])
    fleet_queue = await _open_fleet_queue(cfg, site, opened) if cfg.fleet.database else None
    queue_parts = (store, Admission(cfg), bus, cfg)
    queue_settings: dict[str, Any] = {
        "audit": record, "memory": queue_memory, "capacity": worker.capacity if len(workers) == 1 else lambda: None,
        "models": models, "prompt_digest": PromptMac(keystore).details}
    queue = (QueueManager(*queue_parts, **queue_settings) if fleet_queue is None else
             FleetManager(*queue_parts, **queue_settings, fleet=fleet_queue, on_stale=_stale_alarm(bus)))
    recovered = await queue.recover()
    if recovered:
        log.warning("recovered %d job(s) that were running when the daemon stopped", len(recovered))
    pixel_processes = pool_size(cfg.outputs.pixel_processes, os.cpu_count() or 1,
                                [(w.device.partition(":")[0], int(w.spec.get("threads") or 0)) for w in workers])
    marks = await run_blocking(open_pool, pixel_processes)
    if marks is not None:
        opened.callback(marks.close)
    sink = ProtectedSink(keystore, output_settings, site.outputs_dir,
                         lambda: worker.info.get("weights_sha256") or "", marks)
    for job in recovered:  # what an interrupted attempt wrote was never reported to anyone
        await run_blocking(sink.discard, job.job_id, job.count, "removing the files of an interrupted attempt")

    monitor = await Monitor.open(cfg, site.state_dir, site.outputs_dir, bus,
                                 worker_pid=lambda: worker.pid,
                                 worker_memory=lambda: worker.info.get("memory"),
                                 queue_wait=queue.oldest_wait, audit=record,
                                 workers=lambda: [WorkerInput(w.name, w.device, w.pid, w.info.get("memory"))
                                                  for w in workers])
    opened.push_async_callback(monitor.close)
    monitor.attach(queue, workers, audit)
    monitor.start()
    if monitor.sampling is not None:
        background.watch(monitor.sampling, "monitor", "sampling, metrics and the alert rules", essential=False)
    reactions = Reactions(alerts=monitor.alerts, bus=bus, audit=record, queue=queue,
                          several_workers=len(workers) > 1)

    writer = OutputWriter(queue, sink, executor, audit=record, outputs_blocked=Alarm(bus, "outputs.no_space"))
    lanes: list[Lane] = []
    figures = chain_batch_figures(monitor.service, job_history.record_batch)
    for each, memory in zip(workers, memories):
        lanes.append(Lane(
            queue, each, writer, cfg.worker, max_batch=cfg.queue.max_batch, memory=memory, models=models,
            worker_events=reactions, batch_figures=figures,
            watch_work=lambda task, name, duty, holds_jobs: background.watch(
                task, name, duty, essential=holds_jobs, lasts=False),
            only_lane=lambda: not any(lane.can_take_work for lane in lanes)))
    if isinstance(queue, FleetManager) and fleet_queue is not None:
        wakeup = Wakeup(cfg.fleet.database, box=fleet_queue.box)
        await wakeup.start()
        opened.push_async_callback(wakeup.close)
        dispatcher: Box = FleetBox(queue, lanes, worker_events=reactions, fleet=fleet_queue, wakeup=wakeup,
                                   max_images=cfg.queue.max_batch, heartbeat_seconds=cfg.fleet.heartbeat_seconds)
    else:
        dispatcher = Box(queue, lanes, worker_events=reactions)
    await _check_jobs_recorded(audit, store, monitor)
    fleet = await _join_fleet(cfg, site, fleet_queue, models, lanes, monitor, bus, background, opened)
    if fleet is not None:  # audit logs witness each other (docs/fleet.md)
        witness = Witness(CheckpointBoard(fleet.db), audit, box=fleet.box, signing_key=lambda: keystore.signing_key,
                          state_path=site.state_dir / "fleet-witness.json", on_fork=fork_alarm(bus, record))
        background.start(witness.run(cfg.fleet.heartbeat_seconds), "fleet audit witness",
                         "publishing this box's audit checkpoints and cosigning the other boxes'", essential=False)
    return Parts(keystore=keystore, output_settings=output_settings, audit=audit, record=record, store=store,
                 job_history=job_history, key_maintenance=key_maintenance, worker=worker, queue=queue,
                 monitor=monitor, reactions=reactions, dispatcher=dispatcher, fleet=fleet)


async def _open_fleet_queue(cfg: Config, site: Site, opened: AsyncExitStack) -> FleetQueue:
    """With `[fleet] database`: the fleet's job queue (connected and migrated), prompts sealed under
    the fleet's prompt key (daemon.fleet.prompt_key); the job store is then PostgreSQL."""
    key = prompt_key.load(cfg.fleet.prompt_key_file)
    db = await Database.open(cfg.fleet.database)
    opened.push_async_callback(db.close)
    log.info("fleet: jobs go to %s (prompts sealed under %s)", db.where, key.current_kek_id)
    return FleetQueue(db, PromptSealer(key), box=site.installation, lease_seconds=cfg.fleet.lease_seconds,
                      max_attempts=cfg.queue.max_attempts, aging_seconds=cfg.queue.aging_seconds)


def _stale_alarm(bus: EventBus) -> Callable[[StaleAttempt, str], None]:
    """A refused (stale) write of this box: a critical alert per job, naming the box that owns it now."""
    def alarm(exc: StaleAttempt, what: str) -> None:
        owner = f"box {exc.box!r} owns it now (attempt {exc.current}, {exc.state})" if exc.box else \
            f"it is {exc.state} now (attempt {exc.current})"
        raise_alarm(bus, f"fleet.stale.{exc.job_id}",
                    f"{what}: its lease expired while this box was silent and {owner}; the fencing token refused "
                    "the late write (this box was paused or cut off for longer than [fleet] lease_seconds)",
                    {"job_id": exc.job_id, "attempt": exc.attempt, "current": exc.current, "box": exc.box})
    return alarm


async def _join_fleet(cfg: Config, site: Site, fleet_queue: FleetQueue | None, models: ModelCatalog,
                      lanes: list[Lane], monitor: Monitor, bus: EventBus, background: BackgroundTasks,
                      opened: AsyncExitStack) -> FleetMember | None:
    """With `[fleet] database`: register this box, heartbeat and reap."""
    if fleet_queue is None:
        return None

    def describe() -> BoxInfo:
        return BoxInfo(site.installation, socket=str(site.socket_path), reach=cfg.fleet.reach, version=__version__,
                       models=models.names(),
                       devices=[{"worker": lane.worker.name, "device": lane.worker.device} for lane in lanes],
                       workers=len(lanes),
                       free_workers=sum(1 for lane in lanes if lane.can_take_work and not lane.inflight),
                       health=box_health(monitor.latest(), monitor.alerts.counts))

    member = await FleetMember.enter(fleet_queue, describe, heartbeat_seconds=cfg.fleet.heartbeat_seconds,
                                     on_fault=Alarm(bus, "fleet.unreachable"))
    opened.push_async_callback(member.leave)
    background.start(member.run(), "fleet heartbeat", "this box's heartbeat in the fleet and the lease reaper",
                     essential=False)
    return member


def box_health(sample: dict[str, Any] | None, alerts: dict[str, int]) -> dict[str, Any]:
    """What a heartbeat tells the fleet of this box's health (the console's fleet pane): host and GPU
    memory from the monitor's latest sample, its open alerts by severity."""
    def used_total(memory: Any) -> dict[str, float] | None:
        used, total = ((memory or {}).get(k) for k in ("used", "total"))
        if isinstance(used, int | float) and isinstance(total, int | float):  # not the GPU's "n/a"
            return {"used": float(used), "total": float(total)}
        return None

    sample = sample or {}
    gpus = [{"index": gpu.get("index", n), **figures} for n, gpu in enumerate(sample.get("gpus") or [])
            if (figures := used_total(gpu.get("memory")))]
    return {"memory": used_total((sample.get("host") or {}).get("memory")), "gpu_memory": gpus, "alerts": dict(alerts)}


async def record_certificate_events(keystore: KeyStore, record: ActionRecorder) -> None:
    """Audit the C2PA certificate events the daemon made itself (creation, renewal) not recorded yet;
    keys.rotate records its own, as the admin who asked."""
    for action, subject, details in keystore.c2pa.take_events():
        await record(None, action, subject, details)


async def _open_audit(cfg: Config, site: Site, keystore: KeyStore, bus: EventBus, run_blocking: RunBlocking,
                      opened: AsyncExitStack) -> AuditLog:
    """The audit chain in its own SQLite file (its commits never wait on the queue's), signed
    with the installation's signing key; every entry is also an `audit` event."""
    settings = cfg.audit
    origin = "".join(c if c.isalnum() or c in "-._/" else "-" for c in site.installation) + "/sai-audit"
    trust = Trust(keystore.keys_dir / ANCHOR_FILE, lambda: {
        key_id(raw): raw for raw in (k.public_bytes_raw() for k in keystore.public_keys().values())})
    audit = await AuditLog.open(site.state_dir / "audit.db", keystore.signing_key, origin, trust=trust,
                                checkpoint_every_entries=settings.checkpoint_every_entries,
                                checkpoint_every_seconds=settings.checkpoint_every_seconds,
                                commit_max_batch=settings.commit_max_batch,
                                commit_max_delay_ms=settings.commit_max_delay_ms,
                                previous_key=keystore.previous_signing_key,
                                on_stall=Alarm(bus, "audit_db.locked"))
    opened.push_async_callback(audit.close)
    return audit


async def _check_jobs_recorded(audit: AuditLog, store: JobStore, monitor: Monitor) -> None:
    """A job whose `job.submit` entry is not in the log (write-ahead audit never leaves one) is a
    critical alert: the log lost entries after its anchored checkpoint, or the job was forged."""
    missing = await audit.unrecorded_jobs(await store.job_ids())
    if missing:
        reason = unrecorded_jobs_reason(missing)
        log.error("%s", reason)
        await monitor.alerts.raise_alert("audit.unrecorded_jobs", "critical", reason, {"jobs": missing[:20]})


def _workers(cfg: Config, site: Site, background: BackgroundTasks, models: ModelCatalog) -> list[WorkerSupervisor]:
    """One supervisor per `[worker] devices` entry (daemon.worker.devices), each with its own
    environment (its one GPU) and share of the CPU threads."""
    auto = parse_devices(cfg.worker.devices) is None
    gpus = count_gpus(os.environ.get("CUDA_VISIBLE_DEVICES")) if auto and cfg.model.device != "cpu" else 0
    slots = resolve(cfg.worker.devices, cfg.model.device, cfg.model.threads, gpus)
    log.info("workers: %s", ", ".join(f"{slot.name} ({slot.label})" for slot in slots))
    base = {"model": cfg.model.name, "path": cfg.model.path, "config_dir": cfg.model.config_dir,
            "family": cfg.model.family, "dtype": cfg.model.dtype, "scheduler": cfg.model.scheduler,
            "prediction": cfg.model.prediction,
            "memory_headroom_mb": cfg.model.memory_headroom_mb, "pipeline_wrapper": cfg.worker.pipeline_wrapper,
            "state_dir": str(site.state_dir), "heartbeat_seconds": cfg.worker.heartbeat_seconds,
            "performance": dict(cfg.performance),
            "warmup": {"width": cfg.defaults.width, "height": cfg.defaults.height, "guidance": cfg.defaults.guidance}}

    def reported(name: str) -> Callable[[dict[str, Any]], None]:
        return lambda message: models.worker_reported(message, name)

    return [WorkerSupervisor(
        {**base, "device": slot.device, "threads": slot.threads},
        name=slot.name, device=slot.label, env=slot.env,
        watch_reader=lambda reader: background.watch(
            reader, "worker reader", "hearing from a worker (progress, images, its exit)",
            essential=True, lasts=False),
        on_model=reported(slot.name)) for slot in slots]
