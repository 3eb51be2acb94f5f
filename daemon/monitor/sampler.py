"""One sample: host CPU and memory, daemon and worker processes (psutil), free disk under the
outputs directory, GPUs (NVML, see gpu.py), and what the daemon passes in (the worker's torch
figures, the oldest queued job's age, the recent failure rate).

`collect()` blocks (it reads /proc and asks NVML) and runs in a thread; the values that come from
daemon state are read on the event loop first and handed to it (`Inputs`).

Sample shape (every API result and the `metrics` topic carry it; bytes, percent, seconds):
    {"ts": epoch, "time": RFC 3339, "interval": s,
     "host": {"cpu_percent", "load_1m", "memory": {"used", "total", "available", "percent"}},
     "daemon": {"pid", "rss", "cpu_percent"},
     "worker": {"pid", "rss", "cpu_percent", "gpu_memory", "torch_allocated", "torch_reserved",
                "torch_peak", "device_free", "device_total"},   (the first worker, for clients of one)
     "workers": [{"name", "device", and the same figures as "worker"}],   (every worker, one per device)
     "gpu": {"available", "reason", "driver", "count"}, "gpu_error": reason or None,
     "gpus": [{"index", "name", "uuid", "memory": {...}, "utilization", "memory_utilization",
               "temperature", "power_w", "power_limit_w", "fan_percent", "processes": [{"pid", "used_memory"}]}],
     "disk": {"path", "free", "total", "percent"},
     "queue": {"wait_seconds"}, "jobs": {"finished", "failed", "failure_rate_percent"}}
None means no data (no worker running, torch figures not reported on CPU); "n/a" means the GPU or
driver does not report that field.
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil

from daemon.monitor.gpu import GpuProbe
from daemon.timefmt import rfc3339

TORCH_KEYS = ("torch_allocated", "torch_reserved", "torch_peak", "device_free", "device_total")


@dataclass(frozen=True)
class WorkerInput:
    """One worker as the daemon knows it: its name and configured device, its pid, its last memory report."""

    name: str
    device: str
    pid: int | None
    memory: dict[str, Any] | None


@dataclass(frozen=True)
class Inputs:
    """What the daemon knows, read on the event loop just before a sample is collected."""

    worker_pid: int | None = None
    worker_memory: dict[str, Any] | None = None
    queue_wait: float | None = None
    jobs: dict[str, Any] | None = None
    workers: tuple[WorkerInput, ...] = ()
    """Every worker process (one per device), for the sample's `workers` list."""


class Sampler:
    def __init__(self, outputs_dir: Path, gpu: GpuProbe, interval: float) -> None:
        self.outputs_dir = Path(outputs_dir)
        self.gpu = gpu
        self.interval = interval
        self.daemon = psutil.Process(os.getpid())
        self._worker: psutil.Process | None = None
        self._workers: dict[str, psutil.Process] = {}
        """Each named worker's process (its own psutil handle: cpu_percent counts from its previous call)."""
        # cpu_percent(None) compares with the previous call: prime them so the first sample is real.
        psutil.cpu_percent(None)
        self.daemon.cpu_percent(None)

    def _worker_process(self, pid: int | None) -> psutil.Process | None:
        if pid is None:
            self._worker = None
            return None
        if self._worker is None or self._worker.pid != pid:
            try:
                self._worker = psutil.Process(pid)
                self._worker.cpu_percent(None)
            except psutil.Error:
                self._worker = None
        return self._worker

    def _named_process(self, name: str, pid: int | None) -> psutil.Process | None:
        proc = self._workers.get(name)
        if pid is None:
            self._workers.pop(name, None)
            return None
        if proc is None or proc.pid != pid:
            try:
                proc = self._workers[name] = psutil.Process(pid)
                proc.cpu_percent(None)
            except psutil.Error:
                self._workers.pop(name, None)
                return None
        return proc

    def _worker_section(self, inputs: Inputs, gpus: list[dict[str, Any]]) -> dict[str, Any]:
        proc = self._worker_process(inputs.worker_pid)
        section = self._section(proc, inputs.worker_pid, inputs.worker_memory, gpus)
        if proc is not None and section["rss"] is None:
            self._worker = None
        return section

    def _workers_sections(self, inputs: Inputs, gpus: list[dict[str, Any]]) -> list[dict[str, Any]]:
        sections = []
        for worker in inputs.workers:
            proc = self._named_process(worker.name, worker.pid)
            section = self._section(proc, worker.pid, worker.memory, gpus)
            if proc is not None and section["rss"] is None:
                self._workers.pop(worker.name, None)
            sections.append({"name": worker.name, "device": worker.device, **section})
        return sections

    @staticmethod
    def _section(proc: psutil.Process | None, pid: int | None, reported: dict[str, Any] | None,
                 gpus: list[dict[str, Any]]) -> dict[str, Any]:
        """One worker's figures: its process (psutil), its GPU memory (NVML's process list) and what it
        last reported of torch's memory."""
        section: dict[str, Any] = {"pid": pid, "rss": None, "cpu_percent": None, "gpu_memory": None}
        if proc is not None:
            try:
                with proc.oneshot():
                    section["rss"] = proc.memory_info().rss
                    section["cpu_percent"] = round(proc.cpu_percent(None), 1)
            except psutil.Error:
                pass
        used = [p["used_memory"] for g in gpus if isinstance(g.get("processes"), list)
                for p in g["processes"] if p["pid"] == pid]
        if used:
            section["gpu_memory"] = sum(u for u in used if isinstance(u, int)) if any(
                isinstance(u, int) for u in used) else "n/a"
        memory = reported or {}
        for key in TORCH_KEYS:
            value = memory.get(key)
            section[key] = value if isinstance(value, (int, float)) and not isinstance(value, bool) else None
        return section

    def _disk(self) -> dict[str, Any]:
        path = self.outputs_dir
        while not path.exists() and path != path.parent:
            path = path.parent
        usage = shutil.disk_usage(path)
        return {"path": str(self.outputs_dir), "free": usage.free, "total": usage.total,
                "percent": round(100.0 * usage.used / usage.total, 1) if usage.total else None}

    def collect(self, ts: float, inputs: Inputs) -> dict[str, Any]:
        memory = psutil.virtual_memory()
        with self.daemon.oneshot():
            daemon = {"pid": self.daemon.pid, "rss": self.daemon.memory_info().rss,
                      "cpu_percent": round(self.daemon.cpu_percent(None), 1)}
        gpu = self.gpu.read()
        gpus = gpu.pop("gpus")
        gpu["count"] = len(gpus)
        return {
            "ts": ts,
            "time": rfc3339(ts),
            "interval": self.interval,
            "host": {
                "cpu_percent": round(psutil.cpu_percent(None), 1),
                "load_1m": round(os.getloadavg()[0], 2),
                "memory": {"used": memory.total - memory.available, "total": memory.total,
                           "available": memory.available, "percent": round(memory.percent, 1)},
            },
            "daemon": daemon,
            "worker": self._worker_section(inputs, gpus),
            "workers": self._workers_sections(inputs, gpus),
            "gpu": gpu,
            "gpu_error": gpu["reason"],
            "gpus": gpus,
            "disk": self._disk(),
            "queue": {"wait_seconds": None if inputs.queue_wait is None else round(float(inputs.queue_wait), 3)},
            "jobs": dict(inputs.jobs or {"finished": 0, "failed": 0, "failure_rate_percent": None}),
        }
