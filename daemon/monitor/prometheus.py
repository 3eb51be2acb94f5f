"""The latest sample in the Prometheus text exposition format, and the optional loopback exporter.

A custom Collector over the newest sample (no client-side metric objects to keep in step), in a
private CollectorRegistry so nothing else in the process leaks into the output. "n/a" and absent
figures are left out rather than exported as 0.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from typing import Any

from prometheus_client import CollectorRegistry, generate_latest, start_http_server
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from daemon.schema import parse_listen

log = logging.getLogger("sai.monitor.prometheus")

Source = Callable[[], tuple[dict[str, Any] | None, dict[str, int]]]
"""Returns (latest sample or None, open alert counts)."""


def _num(value: Any) -> float | None:
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


class _Family:
    def __init__(self, name: str, doc: str, labels: tuple[str, ...] = (), unit: str = "") -> None:
        self.family = GaugeMetricFamily(name, doc, labels=list(labels), unit=unit)
        self.empty = True

    def add(self, value: Any, *labels: str) -> None:
        number = _num(value)
        if number is not None:
            self.family.add_metric(list(labels), number)
            self.empty = False


class SampleCollector(Collector):
    def __init__(self, source: Source) -> None:
        self.source = source

    def collect(self) -> Iterator[GaugeMetricFamily]:
        sample, counts = self.source()
        families: list[_Family] = []

        def family(name: str, doc: str, labels: tuple[str, ...] = (), unit: str = "") -> _Family:
            fam = _Family(name, doc, labels, unit)
            families.append(fam)
            return fam

        up = family("sai_monitor_sample_timestamp_seconds", "When the latest monitor sample was taken (epoch).")
        alerts = family("sai_alerts_open", "Open alerts (active or acknowledged) by severity.", ("severity",))
        for severity in ("info", "warning", "critical"):
            alerts.add(counts.get(severity, 0), severity)
        if sample is None:
            yield from (f.family for f in families if not f.empty)
            return
        up.add(sample.get("ts"))
        host = sample.get("host") or {}
        memory = host.get("memory") or {}
        family("sai_host_cpu_percent", "Host CPU use, percent of all cores.").add(host.get("cpu_percent"))
        family("sai_host_load1", "Host load average over one minute.").add(host.get("load_1m"))
        family("sai_host_memory_used_bytes", "Host memory in use (total minus available).").add(memory.get("used"))
        family("sai_host_memory_total_bytes", "Host memory in total.").add(memory.get("total"))
        family("sai_host_memory_percent", "Host memory in use, percent.").add(memory.get("percent"))
        rss = family("sai_process_resident_memory_bytes", "Resident memory of the daemon and (first) worker processes.",
                     ("process",))
        cpu = family("sai_process_cpu_percent", "CPU use of the daemon and worker processes, percent of one core.",
                     ("process",))
        for name in ("daemon", "worker"):
            proc = sample.get(name) or {}
            rss.add(proc.get("rss"), name)
            cpu.add(proc.get("cpu_percent"), name)
        workers = sample.get("workers") or [{"name": "", "device": "", **(sample.get("worker") or {})}]
        torch = family("sai_worker_torch_memory_bytes", "Torch CUDA memory in each worker, as of its last batch.",
                       ("kind", "worker", "device"))
        worker_rss = family("sai_worker_resident_memory_bytes", "Resident memory of each worker process.",
                            ("worker", "device"))
        worker_cpu = family("sai_worker_cpu_percent", "CPU use of each worker process, percent of one core.",
                            ("worker", "device"))
        worker_gpu = family("sai_worker_gpu_memory_bytes", "GPU memory each worker process uses (NVML).",
                            ("worker", "device"))
        for worker in workers:
            who = (str(worker.get("name") or ""), str(worker.get("device") or ""))
            worker_rss.add(worker.get("rss"), *who)
            worker_cpu.add(worker.get("cpu_percent"), *who)
            worker_gpu.add(worker.get("gpu_memory"), *who)
            for kind in ("allocated", "reserved", "peak"):
                torch.add(worker.get(f"torch_{kind}"), kind, *who)
        gpu_info = sample.get("gpu") or {}
        family("sai_gpu_available", "1 when NVML answers and sees a GPU, else 0.").add(
            1 if gpu_info.get("available") else 0)
        labels = ("gpu", "name", "uuid")
        used = family("sai_gpu_memory_used_bytes", "GPU memory in use.", labels)
        total = family("sai_gpu_memory_total_bytes", "GPU memory in total.", labels)
        util = family("sai_gpu_utilization_percent", "GPU utilisation, percent.", labels)
        temp = family("sai_gpu_temperature_celsius", "GPU temperature.", labels)
        power = family("sai_gpu_power_watts", "GPU power draw.", labels)
        procs = family("sai_gpu_process_memory_bytes", "GPU memory per process.", ("gpu", "pid"))
        for gpu in sample.get("gpus") or []:
            ids = (str(gpu.get("index")), str(gpu.get("name")), str(gpu.get("uuid")))
            mem = gpu.get("memory") or {}
            used.add(mem.get("used"), *ids)
            total.add(mem.get("total"), *ids)
            util.add(gpu.get("utilization"), *ids)
            temp.add(gpu.get("temperature"), *ids)
            power.add(gpu.get("power_w"), *ids)
            for proc in gpu.get("processes") if isinstance(gpu.get("processes"), list) else []:
                procs.add(proc.get("used_memory"), ids[0], str(proc.get("pid")))
        disk = sample.get("disk") or {}
        family("sai_outputs_disk_free_bytes", "Free space on the file system of the outputs directory.").add(
            disk.get("free"))
        family("sai_outputs_disk_total_bytes", "Size of the file system of the outputs directory.").add(
            disk.get("total"))
        family("sai_queue_oldest_wait_seconds", "Age of the oldest queued job (absent when none waits).").add(
            (sample.get("queue") or {}).get("wait_seconds"))
        family("sai_jobs_failure_rate_percent", "Failed jobs, percent of those finished in the rate window.").add(
            (sample.get("jobs") or {}).get("failure_rate_percent"))
        yield from (f.family for f in families if not f.empty)


def registry_for(source: Source) -> CollectorRegistry:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(SampleCollector(source))
    return registry


def render(registry: CollectorRegistry) -> str:
    return generate_latest(registry).decode("utf-8")


class Exporter:
    """prometheus_client's HTTP server in its own thread, on a loopback address only."""

    def __init__(self, listen: str, registry: CollectorRegistry) -> None:
        self.address, self.port = parse_listen(listen)
        self.registry = registry
        self._server: Any = None
        self._thread: Any = None

    def start(self) -> None:
        self._server, self._thread = start_http_server(self.port, addr=self.address, registry=self.registry)
        log.info("Prometheus exporter on http://%s:%d/metrics", self.address, self.port)

    @property
    def bound_port(self) -> int | None:
        return None if self._server is None else int(self._server.server_address[1])

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._thread.join(timeout=5)
            self._server = self._thread = None
