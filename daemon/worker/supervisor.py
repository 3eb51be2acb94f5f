"""The daemon's side of the worker: start it, send batches, collect progress and images,
notice when it dies."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from daemon.worker import launch
from daemon.worker.ipc import pack, read_message

log = logging.getLogger("sai.worker")


class WorkerError(Exception):
    """The worker could not run a batch."""


class WorkerCrashed(WorkerError):
    """The worker process ended while it had work. `started` says whether this batch had begun
    (a batch still waiting in the worker's queue was not at fault); `generation` names the worker
    process, so one crash is counted once however many batches it took down."""

    def __init__(self, reason: str, started: bool = True, generation: int = 0) -> None:
        super().__init__(reason)
        self.started = started
        self.generation = generation


class WorkerLoadFailed(WorkerError):
    """The worker could not load the model; the message says why."""


class BatchFailed(WorkerError):
    def __init__(self, kind: str, error: str) -> None:
        super().__init__(error)
        self.kind = kind


@dataclass
class BatchResult:
    images: dict[tuple[str, int], tuple[tuple[int, ...], bytes]] = field(default_factory=dict)
    cancelled: set[str] = field(default_factory=set)
    memory: dict[str, Any] = field(default_factory=dict)
    peak: dict[str, Any] = field(default_factory=dict)


@dataclass
class _Running:
    batch_id: str
    on_progress: Callable[[int, int], None]
    generation: int
    started: bool = False
    result: BatchResult = field(default_factory=BatchResult)
    done: asyncio.Future[BatchResult] = field(default_factory=lambda: asyncio.get_running_loop().create_future())


class WorkerSupervisor:
    def __init__(self, spec: dict[str, Any], *, watch_reader: Callable[[asyncio.Task[None]], object],
                 on_model: Callable[[dict[str, Any]], None], name: str = "cpu0", device: str = "cpu",
                 env: dict[str, str] | None = None) -> None:
        """`watch_reader` is given each worker's reader task: one that raises leaves that worker's
        batches unanswered, so the daemon watches it (daemon.background). `on_model` hears each
        `model` event (a load or unload the worker did: name, family, weights_sha256, device, dtype,
        bytes, seconds)."""
        self.spec = spec
        self.name = name
        """This worker's name (daemon.worker.devices): in status, job records, metrics, logs."""
        self.device = device
        """Its device as configured ("cpu", "cuda:2")."""
        self.env = {**(env or {}), "SAI_WORKER_NAME": name}
        """Added to the worker's allowed environment: its one visible GPU, and its name (test hooks read it)."""
        self._watch_reader = watch_reader
        self._on_model = on_model
        self.process: asyncio.subprocess.Process | None = None
        self.info: dict[str, Any] = {}
        self.state = "stopped"
        self.last_error: str | None = None
        self.restarts = 0
        self.started_at: float | None = None
        self._running: dict[str, _Running] = {}
        self.generation = 0
        self._ready: asyncio.Future[dict[str, Any]] | None = None
        self._reader: asyncio.Task[None] | None = None
        self._batches = 0
        self.last_heartbeat: float | None = None  # monotonic
        self.step_age: float | None = None
        self._killed: asyncio.subprocess.Process | None = None
        """The process `kill` ended on purpose: its SIGKILL is no crash to log as an error."""

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process and self.process.returncode is None else None

    @property
    def alive(self) -> bool:
        return self.process is not None and self.process.returncode is None

    def capacity(self) -> int | None:
        """Bytes the worker can use for generation (device memory, or its address-space cap), as its
        last memory report says; None before it has reported."""
        capacity = self.info.get("memory", {}).get("capacity")
        return int(capacity) if capacity else None

    def status(self) -> dict[str, Any]:
        return {"name": self.name, "configured_device": self.device, "alive": self.alive,
                "state": self.state, "pid": self.pid, "restarts": self.restarts, "last_error": self.last_error,
                "model_id": self.info.get("model_id"), "device": self.info.get("device"),
                "dtype": self.info.get("dtype"), "weights_sha256": self.info.get("weights_sha256"),
                "memory": self.info.get("memory", {})}

    async def start(self, timeout: float = 600.0) -> dict[str, Any]:
        """Spawn the worker and wait until its model is loaded."""
        self.last_heartbeat = self.step_age = None
        if self.process is not None:
            self.restarts += 1
        self.generation += 1
        self.state = "starting"
        self.process = await asyncio.create_subprocess_exec(
            *launch.command(self.spec), stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
            cwd=launch.WORKDIR, env={**launch.child_environment(os.environ), **self.env})
        loop = asyncio.get_running_loop()
        self._ready = loop.create_future()
        self._reader = asyncio.create_task(self._read_loop(self.process), name="sai-worker-reader")
        self._watch_reader(self._reader)
        try:
            self.info = await asyncio.wait_for(asyncio.shield(self._ready), timeout)
        except (TimeoutError, WorkerError) as exc:
            self.state = "failed"
            self.last_error = str(exc) or "timed out loading the model"
            await self.kill()
            raise WorkerLoadFailed(self.last_error) from exc
        self.started_at = time.time()
        self.state = "ready"
        log.info("worker %s ready: pid %s, model %s on %s (%s), loaded in %.1f s", self.name, self.process.pid,
                 self.info["model_id"], self.info["device"], self.info["dtype"], self.info["load_seconds"])
        return self.info

    async def _read_loop(self, process: asyncio.subprocess.Process) -> None:
        assert process.stdout is not None
        try:
            while (message := await read_message(process.stdout)) is not None:
                self._handle(*message)
        except (asyncio.IncompleteReadError, json.JSONDecodeError, ValueError) as exc:
            log.error("worker protocol broken: %s", exc)
        returncode = await process.wait()
        if process is not self.process:
            return
        reason = self._exit_reason(returncode)
        if process is self._killed:
            log.info("worker pid %s stopped by the daemon (%s)", process.pid, reason)
        elif self.state not in ("stopping", "stopped", "failed"):  # "failed": start() has the load error
            self.state = "crashed"
            self.last_error = reason
            log.error("worker pid %s: %s (%s)", process.pid, reason, self.name)
        if self._ready is not None and not self._ready.done():
            self._ready.set_exception(WorkerLoadFailed(self.last_error or reason))
        for running in list(self._running.values()):
            if not running.done.done():
                running.done.set_exception(WorkerCrashed(reason, running.started, running.generation))

    @staticmethod
    def _exit_reason(returncode: int) -> str:
        if returncode < 0:
            try:
                name = signal.Signals(-returncode).name
            except ValueError:
                name = str(-returncode)
            return f"worker process was killed by {name}"
        return f"worker process exited with status {returncode}"

    def heartbeat_problem(self, silence: float, stall: float) -> str | None:
        """Why this worker is not known to be healthy now, or None. A worker that is starting,
        stopped or waiting for a restart is the dispatcher's business, not a wedge."""
        if not self.alive or self.state not in ("ready", "busy") or self.last_heartbeat is None:
            return None
        quiet = time.monotonic() - self.last_heartbeat
        if quiet > silence:
            return f"worker pid {self.pid} sent no heartbeat for {quiet:.0f} s ({self.name})"
        if self.step_age is not None and self.step_age > stall:
            return f"worker pid {self.pid} made no denoising step for {self.step_age:.0f} s ({self.name})"
        return None

    def _handle(self, message: dict[str, Any], payload: bytes | None) -> None:
        event = message.get("ev")
        if event == "heartbeat":
            self.last_heartbeat = time.monotonic()
            step_age = message.get("step_age")
            self.step_age = float(step_age) if isinstance(step_age, (int, float)) else None
            return
        if event == "ready" and self._ready is not None and not self._ready.done():
            self._ready.set_result(message)
            return
        if event == "model":
            self._on_model(message)
            return
        if event == "load_failed":
            self.last_error = message.get("error", "model load failed")
            if self._ready is not None and not self._ready.done():
                self._ready.set_exception(WorkerLoadFailed(self.last_error))
            return
        running = self._running.get(message.get("batch_id", ""))
        if running is None or running.done.done():
            return
        if event == "progress":
            running.started = True
            running.on_progress(int(message["step"]), int(message["steps"]))
        elif event == "image" and payload is not None:
            running.result.images[(message["job_id"], int(message["index"]))] = (tuple(message["shape"]), payload)
        elif event == "done":
            running.result.cancelled = set(message.get("cancelled", []))
            running.result.memory = message.get("memory", {})
            running.result.peak = message.get("peak", {})
            self.info["memory"] = running.result.memory
            running.done.set_result(running.result)
        elif event == "failed":
            self.info["memory"] = message.get("memory", {})
            running.done.set_exception(BatchFailed(message.get("kind", "error"), message.get("error", "")))

    def _send(self, command: dict[str, Any]) -> None:
        if not self.alive or self.process is None or self.process.stdin is None:
            raise WorkerCrashed(self.last_error or "worker is not running", started=False, generation=self.generation)
        self.process.stdin.write(pack(command))

    async def run_batch(self, command: dict[str, Any], on_progress: Callable[[int, int], None]) -> BatchResult:
        """Run one batch; raise WorkerCrashed if the process dies, BatchFailed if the batch errors.

        Batches may be sent while another runs: the worker queues them and starts the next one
        the moment the previous ends, with no round trip through the daemon in between."""
        self._batches += 1
        batch_id = f"b{self._batches}"
        running = self._running[batch_id] = _Running(batch_id, on_progress, self.generation)
        self.state = "busy"
        try:
            self._send({**command, "op": "run", "batch_id": batch_id})
            return await running.done
        finally:
            del self._running[batch_id]
            if self.state == "busy" and not self._running:
                self.state = "ready"

    def unload(self, name: str) -> None:
        """Tell the worker to drop model `name` once the batches sent before this are done."""
        if self.alive:
            self._send({"op": "unload", "name": name})

    def cancel(self, job_ids: list[str]) -> None:
        if self.alive:
            self._send({"op": "cancel", "job_ids": job_ids})

    async def stop(self, timeout: float = 10.0) -> None:
        """Ask the worker to exit after its current batch; kill it if it does not."""
        if not self.alive:
            self.state = "stopped"
            return
        self.state = "stopping"
        try:
            self._send({"op": "shutdown"})
            assert self.process is not None
            await asyncio.wait_for(self.process.wait(), timeout)
        except (TimeoutError, WorkerError, ConnectionError):
            await self.kill()
        if self._reader:
            await asyncio.gather(self._reader, return_exceptions=True)
        self.state = "stopped"

    async def kill(self) -> None:
        """End the worker on purpose (a shutdown past its grace period, a failed start): its batches
        still fail with WorkerCrashed, so their jobs go back to the queue, but the log says the
        daemon stopped it rather than reporting a crash."""
        if self.alive and self.process is not None:
            self._killed = self.process
            self.process.kill()
            await self.process.wait()
