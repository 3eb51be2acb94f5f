"""Which worker processes the daemon runs: one per entry of `[worker] devices`.

Each slot names its worker (`cpu0`, `cpu1`, `cuda0`, `cuda2`: the kind and the index, the CPU ones
counted, the CUDA ones by device index), the device its worker is told to use, the environment
that makes it see only its own GPU (`CUDA_VISIBLE_DEVICES`, counted in PCI bus order as NVML counts
them: CUDA's own default order puts the fastest GPU first, which differs on a box of mixed GPUs),
and its share of the CPU threads.
Import-light: no torch here (the daemon never imports it); the daemon counts GPUs with NVML.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field

from daemon.schema import parse_devices


@dataclass(frozen=True)
class DeviceSlot:
    name: str
    """The worker's name in status, job records, metrics and `worker.restart`."""
    device: str
    """What the worker is told (its spec's `device`): "cpu", "cuda" (its one visible GPU) or "auto"."""
    label: str
    """The device as configured ("cpu", "cuda:2"), for people and metrics labels."""
    threads: int
    """torch threads for this worker (0: torch's default)."""
    env: dict[str, str] = field(default_factory=dict)
    """Set in the worker's environment on top of the allowed variables (daemon.worker.launch)."""


def _visible(index: int, environ: Mapping[str, str]) -> str:
    """What CUDA_VISIBLE_DEVICES a worker for `cuda:index` gets: the index-th entry of the daemon's
    own CUDA_VISIBLE_DEVICES when it has one (indices are relative to what the daemon sees), else
    the index itself."""
    inherited = [part.strip() for part in environ.get("CUDA_VISIBLE_DEVICES", "").split(",") if part.strip()]
    if inherited and index < len(inherited):
        return inherited[index]
    return str(index)


def resolve(devices: object, model_device: str, threads: int, gpus_seen: int,
            environ: Mapping[str, str] | None = None, cores: int | None = None) -> list[DeviceSlot]:
    """The worker slots for `[worker] devices` (already checked by the schema).

    "auto": with `model.device = "cpu"` one CPU worker; else one worker per GPU that NVML sees
    (`gpus_seen`); with none seen, one worker told `model.device` (for "auto" the worker itself
    still takes CUDA when torch finds it). CPU workers split `threads` (0: the machine's cores,
    or torch's own default when there is only one CPU worker)."""
    environ = os.environ if environ is None else environ
    names = parse_devices(devices)
    if names is None:
        if model_device != "cpu" and gpus_seen > 0:
            names = [f"cuda:{i}" for i in range(gpus_seen)]
        else:
            kind = "cuda" if model_device == "cuda" else "cpu"
            return [DeviceSlot(f"{kind}0", model_device, kind, threads)]
    cpu_count = names.count("cpu")
    total = threads or ((cores or os.cpu_count() or 1) if cpu_count > 1 else 0)
    share = max(1, total // cpu_count) if cpu_count and total else 0
    slots: list[DeviceSlot] = []
    cpus = 0
    for name in names:
        if name == "cpu":
            slots.append(DeviceSlot(f"cpu{cpus}", "cpu", "cpu", share, {"CUDA_VISIBLE_DEVICES": ""}))
            cpus += 1
        else:
            index = int(name.partition(":")[2] or 0)
            slots.append(DeviceSlot(f"cuda{index}", "cuda", name, threads, {
                "CUDA_VISIBLE_DEVICES": _visible(index, environ), "CUDA_DEVICE_ORDER": "PCI_BUS_ID"}))
    return slots
