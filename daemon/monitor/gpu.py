"""GPUs through NVML (nvidia-ml-py), read the way nvitop does: static fields once, slow ones at a
lower rate, and a field the device does not support reads "n/a" from then on instead of failing.

No driver is a normal state: `read()` then says `available: false` with NVML's own reason
("NVML Shared Library Not Found", "Driver Not Loaded", ...), and nothing else depends on NVML.
Every call here blocks (NVML talks to the driver): the monitor runs `read()` in a thread.
"""

from __future__ import annotations

import functools
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from types import ModuleType
from typing import Any

log = logging.getLogger("sai.monitor.gpu")

NA = "n/a"
"""A field this GPU or driver does not report. Absent data (no worker, no sample yet) is None instead."""

RETRY_SECONDS = 60.0
"""How often a failed nvmlInit is retried: a driver loaded after the daemon started is picked up."""


def load_nvml() -> tuple[ModuleType | None, str | None]:
    try:
        import pynvml
    except ImportError as exc:  # nvidia-ml-py is a dependency; this only helps a broken install say so
        return None, f"nvidia-ml-py is not installed ({exc})"
    return pynvml, None


def count_gpus(visible: str | None = None) -> int:
    """How many GPUs the workers can be given: what NVML counts, or fewer when the daemon's own
    CUDA_VISIBLE_DEVICES (`visible`) names fewer. 0 without NVML or a driver."""
    nvml, _ = load_nvml()
    if nvml is None:
        return 0
    try:
        nvml.nvmlInit()
    except Exception:  # NVMLError, or a library that cannot load: no GPU to use
        return 0
    try:
        count = int(nvml.nvmlDeviceGetCount())
    except Exception:
        count = 0
    finally:
        try:
            nvml.nvmlShutdown()
        except Exception:
            pass
    if visible is not None and visible.strip():
        count = min(count, len([part for part in visible.split(",") if part.strip()]))
    elif visible is not None:
        count = 0  # CUDA_VISIBLE_DEVICES="" hides every GPU
    return count


def _text(value: Any) -> str:
    return value.decode(errors="replace") if isinstance(value, bytes) else str(value)


@dataclass
class _Device:
    index: int
    handle: Any
    static: dict[str, Any]
    unsupported: set[str] = field(default_factory=set)
    slow: dict[str, Any] = field(default_factory=dict)
    slow_at: float = float("-inf")


class GpuProbe:
    """One NVML session. `nvml` is the pynvml module (a stand-in with the same names in tests)."""

    def __init__(self, nvml: Any = None, slow_interval: float = 5.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        if nvml is None:
            nvml, reason = load_nvml()
        else:
            reason = None
        self.nvml = nvml
        self.slow_interval = slow_interval
        self.clock = clock
        self.reason: str | None = reason
        self.driver: str | None = None
        self.devices: list[_Device] = []
        self._initialised = False
        self._retry_at = float("-inf")
        self._warned: set[tuple[int, str]] = set()

    # -- session ------------------------------------------------------------------------------

    def _init(self) -> None:
        nvml = self.nvml
        if nvml is None or self._initialised or self.clock() < self._retry_at:
            return
        try:
            nvml.nvmlInit()
        except nvml.NVMLError as exc:
            self.reason = _text(exc) or type(exc).__name__
            self._retry_at = self.clock() + RETRY_SECONDS
            return
        self._initialised = True
        try:
            self.driver = _text(nvml.nvmlSystemGetDriverVersion())
        except nvml.NVMLError:
            self.driver = None
        try:
            count = nvml.nvmlDeviceGetCount()
            self.devices = [self._open(i) for i in range(count)]
        except nvml.NVMLError as exc:
            self.reason = _text(exc)
            self.close()
            self._retry_at = self.clock() + RETRY_SECONDS
            return
        self.reason = None if self.devices else "NVML found no GPU"

    def _open(self, index: int) -> _Device:
        nvml = self.nvml
        dev = _Device(index, nvml.nvmlDeviceGetHandleByIndex(index), {})
        memory = self._field(dev, "memory_info", lambda: nvml.nvmlDeviceGetMemoryInfo(dev.handle))
        limit = self._field(dev, "power_limit", lambda: nvml.nvmlDeviceGetEnforcedPowerLimit(dev.handle))
        dev.static = {
            "name": self._field(dev, "name", lambda: _text(nvml.nvmlDeviceGetName(dev.handle))),
            "uuid": self._field(dev, "uuid", lambda: _text(nvml.nvmlDeviceGetUUID(dev.handle))),
            "memory_total": NA if memory == NA else int(memory.total),
            "power_limit_w": NA if limit == NA else round(limit / 1000.0, 1),
        }
        return dev

    def close(self) -> None:
        if self._initialised:
            try:
                self.nvml.nvmlShutdown()
            except self.nvml.NVMLError:
                pass
        self._initialised = False
        self.devices = []

    # -- fields -------------------------------------------------------------------------------

    def _field(self, dev: _Device, name: str, read: Callable[[], Any]) -> Any:
        """One NVML call: "n/a" when unsupported (and never asked again), or on any other NVML error
        (asked again next time; logged once per device and field)."""
        if name in dev.unsupported:
            return NA
        nvml = self.nvml
        try:
            return read()
        except nvml.NVMLError as exc:
            not_supported = getattr(nvml, "NVMLError_NotSupported", None)
            if not_supported is not None and isinstance(exc, not_supported):
                dev.unsupported.add(name)
            elif (dev.index, name) not in self._warned:
                self._warned.add((dev.index, name))
                log.warning("GPU %d: reading %s failed: %s (shown as n/a)", dev.index, name, _text(exc))
            return NA

    def _processes(self, dev: _Device) -> Any:
        nvml = self.nvml
        merged: dict[int, Any] = {}
        for name, fn in (("compute_processes", "nvmlDeviceGetComputeRunningProcesses"),
                         ("graphics_processes", "nvmlDeviceGetGraphicsRunningProcesses")):
            procs = self._field(dev, name, functools.partial(getattr(nvml, fn), dev.handle))
            if procs == NA:
                continue
            for proc in procs:
                used = getattr(proc, "usedGpuMemory", None)
                used = NA if used is None else int(used)
                old = merged.get(int(proc.pid))
                merged[int(proc.pid)] = used if old in (None, NA) else old if used == NA else old + used
        if not merged and {"compute_processes", "graphics_processes"} <= dev.unsupported:
            return NA
        return [{"pid": pid, "used_memory": used} for pid, used in sorted(merged.items())]

    def _read_slow(self, dev: _Device) -> dict[str, Any]:
        now = self.clock()
        if now - dev.slow_at >= self.slow_interval:
            nvml = self.nvml
            dev.slow = {
                "fan_percent": self._field(dev, "fan", lambda: nvml.nvmlDeviceGetFanSpeed(dev.handle)),
                "processes": self._processes(dev),
            }
            dev.slow_at = now
        return dev.slow

    def _read_device(self, dev: _Device) -> dict[str, Any]:
        nvml = self.nvml
        memory = self._field(dev, "memory_info", lambda: nvml.nvmlDeviceGetMemoryInfo(dev.handle))
        rates = self._field(dev, "utilization", lambda: nvml.nvmlDeviceGetUtilizationRates(dev.handle))
        temp = self._field(dev, "temperature",
                           lambda: nvml.nvmlDeviceGetTemperature(dev.handle, nvml.NVML_TEMPERATURE_GPU))
        power = self._field(dev, "power", lambda: nvml.nvmlDeviceGetPowerUsage(dev.handle))
        total = dev.static["memory_total"]
        if memory == NA:
            mem: dict[str, Any] = {"used": NA, "free": NA, "total": total, "percent": NA}
        else:
            total = int(memory.total)
            mem = {"used": int(memory.used), "free": int(memory.free), "total": total,
                   "percent": round(100.0 * memory.used / total, 1) if total else NA}
        return {
            "index": dev.index,
            "name": dev.static["name"],
            "uuid": dev.static["uuid"],
            "memory": mem,
            "utilization": NA if rates == NA else int(rates.gpu),
            "memory_utilization": NA if rates == NA else int(rates.memory),
            "temperature": temp if temp == NA else int(temp),
            "power_w": NA if power == NA else round(power / 1000.0, 1),
            "power_limit_w": dev.static["power_limit_w"],
            **self._read_slow(dev),
        }

    def read(self) -> dict[str, Any]:
        """{"available", "reason", "driver", "gpus": [...]}; never raises for NVML's sake."""
        self._init()
        if not self._initialised or not self.devices:
            return {"available": False, "reason": self.reason, "driver": self.driver, "gpus": []}
        return {"available": True, "reason": None, "driver": self.driver,
                "gpus": [self._read_device(dev) for dev in self.devices]}
