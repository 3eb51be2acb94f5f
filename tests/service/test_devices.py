"""One worker per device inside one daemon (issue 16): a real `sai daemon` with two CPU workers.

Jobs record the worker that ran them, status/metrics/CLI show every worker, `worker.restart`
takes a name; two jobs run side by side; a worker SIGKILLed mid-batch costs only its batch, which
finishes on a worker exactly once; a crash-looping device is halted with a critical alert naming
it while the other drains the queue.
"""

from __future__ import annotations

import asyncio
import os
import re
import signal
import time
from pathlib import Path
from typing import Any

import pytest

from daemon.client import DaemonClient
from daemon.protocol import RpcError
from daemon.timefmt import parse_rfc3339
from tests.harness import DaemonProcess, run_sai

TWO_CPUS: dict[str, dict[str, Any]] = {"worker": {"devices": ["cpu", "cpu"]}, "model": {"threads": 2}}
POISON = "tests.pipeline_doubles:CrashOnOneDeviceForTests"

pytestmark = pytest.mark.timeout(400)


async def workers_ready(client: DaemonClient, count: int = 2, timeout: float = 180) -> list[dict[str, Any]]:
    deadline = time.monotonic() + timeout
    while True:
        workers = (await client.call("daemon.status"))["workers"]
        if len(workers) == count and all(w["state"] == "ready" for w in workers):
            return workers
        assert time.monotonic() < deadline, workers
        await asyncio.sleep(0.1)


def output_files(daemon: DaemonProcess, job_id: str) -> list[Path]:
    return sorted((daemon.state_dir / "outputs").glob(f"{job_id}-*.png.sai"))


async def test_two_cpu_workers_run_two_jobs_at_once_and_every_view_names_them(make_daemon, client_of, wait_for):
    daemon = make_daemon(TWO_CPUS)
    client = await client_of(daemon)
    workers = await workers_ready(client)
    assert [(w["name"], w["configured_device"], w["alive"], w["halted"]) for w in workers] == [
        ("cpu0", "cpu", True, None), ("cpu1", "cpu", True, None)]
    assert all(w["memory"].get("rss") for w in workers)
    ids = [(await client.call("job.submit", prompt=f"side by side {i}", width=128, height=128, steps=12))["job_id"]
           for i in range(2)]
    jobs = [await wait_for(client, job_id) for job_id in ids]
    assert [job["state"] for job in jobs] == ["succeeded", "succeeded"]
    assert sorted(job["worker"] for job in jobs) == ["cpu0", "cpu1"]
    assert {job["device"] for job in jobs} == {"cpu"}
    (a0, a1), (b0, b1) = ((parse_rfc3339(j["started_at"]), parse_rfc3339(j["finished_at"])) for j in jobs)
    assert a0 < b1 and b0 < a1, "the two jobs did not run at the same time"

    status = await asyncio.to_thread(run_sai, "status", socket_path=daemon.socket)
    assert status.returncode == 0, status.stderr
    assert re.search(r"cpu0\b.*\bcpu\b.*ready", status.stdout) and re.search(r"cpu1\b.*\bcpu\b.*ready", status.stdout)
    metrics = await asyncio.to_thread(run_sai, "metrics", "--prometheus", socket_path=daemon.socket)
    assert 'sai_worker_up{device="cpu",worker="cpu0"} 1.0' in metrics.stdout
    assert 'sai_worker_up{device="cpu",worker="cpu1"} 1.0' in metrics.stdout
    assert 'sai_worker_restarts_total{cause="crash",worker="cpu1"} 0.0' in metrics.stdout
    for name in ("cpu0", "cpu1"):  # sampled per worker process
        assert re.search(rf'sai_worker_resident_memory_bytes{{device="cpu",worker="{name}"}} [1-9]', metrics.stdout)

    with pytest.raises(RpcError) as refused:
        await client.call("worker.restart", worker="gpu7")
    assert refused.value.code == -32602 and "gpu7" in refused.value.message and "cpu0, cpu1" in refused.value.message
    unknown = await asyncio.to_thread(run_sai, "worker", "restart", "gpu7", socket_path=daemon.socket)
    assert unknown.returncode != 0 and "no worker 'gpu7'" in unknown.stderr and "Traceback" not in unknown.stderr
    before = {w["name"]: w["pid"] for w in workers}
    reply = await client.call("worker.restart", worker="cpu1", reason="test")
    assert reply["workers"] == ["cpu1"]
    deadline = time.monotonic() + 180
    while True:
        now = {w["name"]: (w["pid"], w["state"]) for w in (await client.call("daemon.status"))["workers"]}
        if now["cpu1"][0] not in (None, before["cpu1"]) and now["cpu1"][1] == "ready":
            break
        assert time.monotonic() < deadline, now
        await asyncio.sleep(0.1)
    assert now["cpu0"][0] == before["cpu0"]  # the other worker was left alone


async def test_a_worker_killed_mid_batch_costs_only_its_batch_and_each_job_runs_once(make_daemon, client_of,
                                                                                     wait_for):
    daemon = make_daemon({**TWO_CPUS, "queue": {"max_attempts": 5}})
    client = await client_of(daemon)
    await workers_ready(client)
    await client.call("events.subscribe", topics=["job"])
    ids = [(await client.call("job.submit", prompt=f"kill {i}", width=128, height=128, steps=40,
                              count=1 + i % 2))["job_id"] for i in range(4)]
    while True:  # the first step of some job: its worker is mid-batch
        event = await client.next_event(timeout=180)
        if event["topic"] == "job" and event["data"].get("kind") == "progress":
            victim = await client.call("job.get", job_id=event["data"]["job_id"])
            break
    pids = {w["name"]: w["pid"] for w in (await client.call("daemon.status"))["workers"]}
    os.kill(pids[victim["worker"]], signal.SIGKILL)
    jobs = [await wait_for(client, job_id, timeout=300) for job_id in ids]
    assert [job["state"] for job in jobs] == ["succeeded"] * 4, [job["error"] for job in jobs]
    for job in jobs:
        count = job["params"]["count"]
        assert len(job["outputs"]) == count and len(output_files(daemon, job["job_id"])) == count
    assert max(job["attempts"] for job in jobs) == 2  # the killed batch ran again, once
    assert f"worker pid {pids[victim['worker']]}: worker process was killed by SIGKILL" in daemon.read_log()


async def test_a_crash_looping_device_is_halted_while_the_other_drains_the_queue(make_daemon, client_of, wait_for):
    daemon = make_daemon({**TWO_CPUS, "worker": {**TWO_CPUS["worker"], "pipeline_wrapper": POISON,
                                                   "crash_loop_count": 2, "max_backoff": 1.0},
                          "queue": {"max_attempts": 10}})
    client = await client_of(daemon)
    await workers_ready(client)
    jobs: list[dict[str, Any]] = []
    deadline = time.monotonic() + 300
    while True:  # keep work queued until the poisoned worker has crashed often enough to be halted
        ids = [(await client.call("job.submit", prompt=f"drain {i}", steps=4))["job_id"] for i in range(4)]
        jobs += [await wait_for(client, job_id, timeout=60) for job_id in ids]
        status = await client.call("daemon.status")
        if status["workers"][1]["halted"]:
            break
        assert time.monotonic() < deadline, status["workers"]
    assert {job["state"] for job in jobs} == {"succeeded"}
    assert {job["worker"] for job in jobs} == {"cpu0"}
    assert not status["queue"]["paused"]
    halted = {w["name"]: w["halted"] for w in status["workers"]}
    assert halted["cpu0"] is None and "worker cpu1 crashed 2 times" in halted["cpu1"]
    alerts = (await client.call("alerts.list", state="all"))["alerts"]
    loop = [a for a in alerts if a["key"] == "worker.crash_loop.cpu1"]
    assert loop and loop[0]["severity"] == "critical" and "cpu1" in loop[0]["message"]
    assert not [a for a in alerts if a["key"].startswith("worker.crash_loop") and "cpu0" in a["key"]]
