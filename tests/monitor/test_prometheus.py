"""Prometheus: the text parses, carries host memory and daemon RSS, and the loopback exporter serves it."""

from __future__ import annotations

import asyncio
import socket
import urllib.request

from prometheus_client.parser import text_string_to_metric_families

from tests.monitor.mon_helpers import sampling_config


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def values(text: str) -> dict[str, dict[tuple[tuple[str, str], ...], float]]:
    out: dict[str, dict[tuple[tuple[str, str], ...], float]] = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out.setdefault(s.name, {})[tuple(sorted(s.labels.items()))] = s.value
    return out


async def test_text_parses_with_host_memory_and_daemon_rss(open_monitor) -> None:
    monitor, _, _ = await open_monitor()
    before = values(monitor.prometheus_text())
    assert "sai_host_memory_used_bytes" not in before  # no sample yet: only what is known
    assert before["sai_alerts_open"][(("severity", "critical"),)] == 0
    sample = await monitor.tick()
    await monitor.alerts.raise_alert("x", "critical", "something")
    got = values(monitor.prometheus_text())
    assert got["sai_host_memory_used_bytes"][()] == sample["host"]["memory"]["used"]
    assert got["sai_host_memory_total_bytes"][()] == sample["host"]["memory"]["total"]
    assert got["sai_process_resident_memory_bytes"][(("process", "daemon"),)] == sample["daemon"]["rss"]
    assert (("process", "worker"),) not in got["sai_process_resident_memory_bytes"]  # no worker: absent, not 0
    assert got["sai_outputs_disk_free_bytes"][()] == sample["disk"]["free"]
    assert got["sai_monitor_sample_timestamp_seconds"][()] == sample["ts"]
    assert got["sai_alerts_open"][(("severity", "critical"),)] == 1


async def test_loopback_exporter_serves_the_same_figures(open_monitor) -> None:
    port = free_port()
    monitor, _, _ = await open_monitor(sampling_config(monitor__listen=f"127.0.0.1:{port}",
                                                      monitor__interval=0.05))
    monitor.start()
    assert monitor.exporter is not None and monitor.exporter.bound_port == port
    await monitor.tick()

    def fetch() -> str:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as reply:
            return reply.read().decode()

    text = await asyncio.get_running_loop().run_in_executor(None, fetch)
    got = values(text)
    assert got["sai_host_memory_total_bytes"][()] > 0
    assert got["sai_process_resident_memory_bytes"][(("process", "daemon"),)] > 0
    await monitor.close()
    with socket.socket() as sock:  # nobody listens on the port any more (TIME_WAIT aside)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", port))


async def test_a_busy_port_is_an_alert_not_a_crash(open_monitor) -> None:
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        monitor, _, _ = await open_monitor(sampling_config(monitor__listen=f"127.0.0.1:{port}"))
        monitor.start()
        await asyncio.sleep(0.05)
        (alert,) = await monitor.alerts.list()
        assert alert["key"] == "monitor.exporter" and str(port) in alert["message"]
        assert monitor.exporter is None
