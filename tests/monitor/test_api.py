"""The monitor methods and `sai metrics` / `sai alerts` / `sai ack` over the real socket server."""

from __future__ import annotations

import asyncio
import json
import os
import sys
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from daemon.client import DaemonClient
from daemon.protocol import INVALID_PARAMS, NOT_FOUND, RpcError
from tests.monitor.mon_helpers import sampling_config
from tests.monitor.mon_server import ServedMonitor

ROOT = Path(__file__).resolve().parents[2]


async def sai(*args: str) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(sys.executable, "-m", "console.cli", *args, cwd=ROOT,
                                                stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
                                                env={**os.environ, "XDG_CONFIG_HOME": "/nonexistent"})
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    return proc.returncode or 0, out.decode(), err.decode()


async def test_methods_over_the_socket(open_monitor) -> None:
    cfg = sampling_config()
    monitor, bus, _ = await open_monitor(cfg)
    for _ in range(3):
        await monitor.tick()
    async with ServedMonitor(monitor, bus, cfg) as served:
        client = await DaemonClient.connect(served.socket)
        try:
            snap = await client.call("metrics.snapshot")
            assert snap["host"]["memory"]["total"] > 0 and len(snap["history"]["ts"]) == 3
            assert "gpu" in snap and "reason" in snap["gpu"]
            assert (await client.call("metrics.snapshot", history_seconds=0))["history"]["ts"] == []
            hist = await client.call("metrics.history", since=monitor.clock() - 600)
            assert hist["step"] == 60 and hist["samples"] and hist["samples"][-1]["host"]["memory"]["total"] > 0
            with pytest.raises(RpcError) as err:
                await client.call("metrics.history", step=90)
            assert err.value.code == INVALID_PARAMS and err.value.data["field"] == "step"
            with pytest.raises(RpcError) as err:
                await client.call("metrics.history", since="last tuesday")
            assert err.value.data["field"] == "since"
            text = (await client.call("metrics.prometheus"))["text"]
            names = {family.name for family in text_string_to_metric_families(text)}
            assert {"sai_host_memory_used_bytes", "sai_process_resident_memory_bytes"} <= names

            await client.call("events.subscribe", topics=["alert"])
            raised = await monitor.alerts.raise_alert("worker.crash_loop", "critical", "worker crashed 3 times in 60 s")
            event = await client.next_event(timeout=5)
            assert event["topic"] == "alert" and event["data"]["alert"]["alert_id"] == raised["alert_id"]
            listed = await client.call("alerts.list")
            assert [a["alert_id"] for a in listed["alerts"]] == [raised["alert_id"]]
            assert listed["counts"]["critical"] == 1
            acked = (await client.call("alerts.ack", alert_id=str(raised["alert_id"])))["alert"]
            assert acked["state"] == "acked" and acked["acked_by"]["uid"] == os.getuid()
            assert (await client.next_event(timeout=5))["data"]["kind"] == "acked"
            with pytest.raises(RpcError) as err:
                await client.call("alerts.ack", alert_id=12345)
            assert err.value.code == NOT_FOUND
            with pytest.raises(RpcError) as err:
                await client.call("alerts.list", state="sleeping")
            assert err.value.code == INVALID_PARAMS
        finally:
            await client.close()


async def test_cli_commands(open_monitor) -> None:
    cfg = sampling_config()
    monitor, bus, _ = await open_monitor(cfg)
    await monitor.tick()
    raised = await monitor.alerts.raise_alert("worker.leak", "warning", "worker memory grows 40 MiB per job")
    async with ServedMonitor(monitor, bus, cfg) as served:
        sock = str(served.socket)
        code, out, err = await sai("metrics", "--socket", sock)
        assert code == 0, err
        for label in ("host", "daemon", "worker", "torch", "disk", "queue", "alerts"):
            assert any(line.startswith(label) for line in out.splitlines()), (label, out)
        assert "1 active" in out
        gpu_line = next(line for line in out.splitlines() if line.startswith("gpu"))
        assert gpu_line.split(None, 1)[1] == "none: " + str(monitor.latest()["gpu"]["reason"]) or "gpu0" in out
        code, out, err = await sai("metrics", "--json", "--socket", sock)
        assert code == 0 and json.loads(out)["daemon"]["pid"] == os.getpid()
        code, out, err = await sai("metrics", "--prometheus", "--socket", sock)
        families = {f.name: f for f in text_string_to_metric_families(out)}
        assert families["sai_host_memory_used_bytes"].samples[0].value > 0
        daemon_rss = [s for s in families["sai_process_resident_memory_bytes"].samples
                      if s.labels == {"process": "daemon"}]
        assert daemon_rss and daemon_rss[0].value > 0
        code, out, err = await sai("alerts", "--socket", sock)
        assert code == 0 and "worker memory grows" in out and "warning" in out
        code, out, err = await sai("ack", str(raised["alert_id"]), "--socket", sock)
        assert code == 0 and f"alert {raised['alert_id']} acknowledged" in out
        code, out, err = await sai("alerts", "--json", "--socket", sock)
        assert json.loads(out)["alerts"][0]["state"] == "acked"
        await monitor.alerts.clear("worker.leak")
        code, out, _ = await sai("alerts", "--socket", sock)
        assert "no open alerts" in out
        code, out, _ = await sai("alerts", "--all", "--socket", sock)
        assert "cleared" in out
        code, _, err = await sai("ack", "999", "--socket", sock)
        assert code != 0 and "no alert 999" in err
