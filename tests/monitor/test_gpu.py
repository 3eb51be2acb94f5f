"""GPUs: no driver is a normal state (NVML's own reason, no exception), and a field the device does
not support reads "n/a" and is not asked again; slow fields are read at the slower rate."""

from __future__ import annotations

from collections import Counter
from types import SimpleNamespace
from typing import Any

import pynvml
import pytest

from daemon.monitor.gpu import NA, GpuProbe
from tests.monitor.mon_helpers import Clock


def nvml_reason() -> str | None:
    """NVML's reason for being unavailable here, or None when a driver answers."""
    try:
        pynvml.nvmlInit()
    except pynvml.NVMLError as exc:
        return str(exc)
    pynvml.nvmlShutdown()
    return None


def test_without_a_driver_the_probe_reports_nvmls_reason() -> None:
    reason = nvml_reason()
    if reason is None:
        pytest.skip("an NVIDIA driver answers on this machine")
    probe = GpuProbe()
    result = probe.read()
    assert result == {"available": False, "reason": reason, "driver": None, "gpus": []}
    assert probe.read()["reason"] == reason  # and again, quietly
    probe.close()


async def test_without_a_driver_the_sample_says_why_and_the_cpu_path_runs(open_monitor) -> None:
    reason = nvml_reason()
    if reason is None:
        pytest.skip("an NVIDIA driver answers on this machine")
    monitor, _, _ = await open_monitor()
    sample = await monitor.tick()
    assert sample["gpu"]["available"] is False and sample["gpu"]["reason"] == reason
    assert sample["gpu_error"] == reason and sample["gpus"] == []
    assert sample["host"]["memory"]["total"] > 0 and sample["daemon"]["rss"] > 0
    assert "sai_gpu_available 0.0" in monitor.prometheus_text()


def test_with_a_driver_the_probe_reads_every_gpu() -> None:
    if nvml_reason() is not None:
        pytest.skip("no NVIDIA driver here")
    probe = GpuProbe()
    result = probe.read()
    assert result["available"] and result["gpus"]
    for gpu in result["gpus"]:
        assert gpu["memory"]["total"] == NA or gpu["memory"]["total"] > 0
        assert isinstance(gpu["processes"], list) or gpu["processes"] == NA
    probe.close()


class FakeNvmlWithUnsupportedFields:
    """A stand-in for pynvml (the real one's error classes) with one GPU that does not report
    temperature, power, power limit, fan or graphics processes; it counts the calls it gets."""

    NVMLError = pynvml.NVMLError
    NVMLError_NotSupported = pynvml.NVMLError_NotSupported
    NVML_TEMPERATURE_GPU = pynvml.NVML_TEMPERATURE_GPU

    def __init__(self) -> None:
        self.calls: Counter[str] = Counter()

    def __getattr__(self, name: str) -> Any:
        supported = {
            "nvmlInit": lambda: None, "nvmlShutdown": lambda: None,
            "nvmlSystemGetDriverVersion": lambda: b"999.1",
            "nvmlDeviceGetCount": lambda: 1,
            "nvmlDeviceGetHandleByIndex": lambda i: f"handle{i}",
            "nvmlDeviceGetName": lambda h: "Fake GPU",
            "nvmlDeviceGetUUID": lambda h: "GPU-fake",
            "nvmlDeviceGetMemoryInfo": lambda h: SimpleNamespace(total=8 * 2**30, used=2 * 2**30, free=6 * 2**30),
            "nvmlDeviceGetUtilizationRates": lambda h: SimpleNamespace(gpu=37, memory=12),
            "nvmlDeviceGetComputeRunningProcesses": lambda h: [SimpleNamespace(pid=4321, usedGpuMemory=2**30),
                                                               SimpleNamespace(pid=99, usedGpuMemory=None)],
        }
        unsupported = {"nvmlDeviceGetTemperature", "nvmlDeviceGetPowerUsage", "nvmlDeviceGetEnforcedPowerLimit",
                       "nvmlDeviceGetFanSpeed", "nvmlDeviceGetGraphicsRunningProcesses"}
        if name not in supported and name not in unsupported:
            raise AttributeError(name)

        def call(*args: Any) -> Any:
            self.calls[name] += 1
            if name in unsupported:
                raise pynvml.NVMLError(pynvml.NVML_ERROR_NOT_SUPPORTED)
            return supported[name](*args)

        return call


def test_unsupported_fields_read_na_and_are_not_asked_again() -> None:
    fake = FakeNvmlWithUnsupportedFields()
    clock = Clock(0.0)
    probe = GpuProbe(fake, slow_interval=5.0, clock=clock)
    first = probe.read()
    assert first["available"] and first["driver"] == "999.1"
    (gpu,) = first["gpus"]
    assert gpu["name"] == "Fake GPU" and gpu["uuid"] == "GPU-fake"
    assert gpu["memory"] == {"used": 2 * 2**30, "free": 6 * 2**30, "total": 8 * 2**30, "percent": 25.0}
    assert (gpu["utilization"], gpu["memory_utilization"]) == (37, 12)
    assert gpu["temperature"] == gpu["power_w"] == gpu["power_limit_w"] == gpu["fan_percent"] == NA
    assert gpu["processes"] == [{"pid": 99, "used_memory": NA}, {"pid": 4321, "used_memory": 2**30}]
    for _ in range(20):
        clock.advance(1.0)
        probe.read()
    for name in ("nvmlDeviceGetTemperature", "nvmlDeviceGetPowerUsage", "nvmlDeviceGetFanSpeed",
                 "nvmlDeviceGetGraphicsRunningProcesses", "nvmlDeviceGetEnforcedPowerLimit",
                 "nvmlDeviceGetName", "nvmlDeviceGetUUID"):
        assert fake.calls[name] == 1, name
    assert fake.calls["nvmlDeviceGetUtilizationRates"] == 21  # fast: every read
    assert fake.calls["nvmlDeviceGetComputeRunningProcesses"] == 5  # slow: t = 0, 5, 10, 15, 20


async def test_unsupported_fields_in_a_monitor_sample_and_prometheus(open_monitor) -> None:
    monitor, _, _ = await open_monitor(nvml=FakeNvmlWithUnsupportedFields(), worker_pid=lambda: 4321)
    sample = await monitor.tick()
    assert sample["gpu"] == {"available": True, "reason": None, "driver": "999.1", "count": 1}
    assert sample["gpus"][0]["temperature"] == NA
    assert sample["worker"]["gpu_memory"] == 2**30
    text = monitor.prometheus_text()
    assert 'sai_gpu_utilization_percent{gpu="0",name="Fake GPU",uuid="GPU-fake"} 37.0' in text
    assert "sai_gpu_temperature_celsius" not in text  # n/a is left out, not exported as 0
    await monitor.evaluate(sample)  # the temperature rule skips "n/a" without complaint
    assert await monitor.alerts.list() == []
