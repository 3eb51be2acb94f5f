"""The daemon's life: start, refuse a second one, stale sockets, SIGTERM drain, kill -9 recovery."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import socket
import stat
import time
from pathlib import Path

import pytest

from tests.configs import NO_WORKER
from tests.harness import run_sai


def test_second_daemon_on_the_same_socket_is_refused(make_daemon):
    first = make_daemon(NO_WORKER)
    second = make_daemon(NO_WORKER, start=False)
    second.socket = first.socket
    out = run_sai("daemon", "--socket", str(first.socket), "--state-dir", str(second.state_dir),
                  "--config", str(second.config_file))
    assert out.returncode != 0
    assert "not starting" in out.stderr and ("another daemon" in out.stderr)
    # The first one is unharmed.
    assert run_sai("status", socket_path=first.socket).returncode == 0


def test_second_daemon_on_the_same_state_is_refused(make_daemon):
    first = make_daemon(NO_WORKER)
    second = make_daemon(NO_WORKER, start=False, state_from=first)
    out = run_sai("daemon", "--socket", str(second.socket), "--state-dir", str(first.state_dir),
                  "--config", str(second.config_file))
    assert out.returncode != 0 and "state directory" in out.stderr


def test_stale_socket_file_is_removed(make_daemon):
    daemon = make_daemon(NO_WORKER, start=False)
    stale = socket.socket(socket.AF_UNIX)
    stale.bind(str(daemon.socket))
    stale.close()  # the file stays, nobody listens
    daemon.start()
    assert "removing stale socket" in daemon.read_log()
    assert run_sai("status", socket_path=daemon.socket).returncode == 0


def test_sigterm_with_idle_queue_exits_zero_and_removes_socket(make_daemon):
    daemon = make_daemon(NO_WORKER)
    assert daemon.terminate() == 0
    assert not daemon.socket.exists()
    assert "daemon stopped" in daemon.read_log()


def readable_by_others(root: Path) -> list[str]:
    """What under `root` (symlinks not followed) has any group or other permission bit."""
    wide = []
    for directory, dirs, files in os.walk(root):
        for name in [".", *dirs, *files]:
            st = os.lstat(Path(directory, name))
            if not stat.S_ISLNK(st.st_mode) and st.st_mode & 0o077:
                wide.append(f"{Path(directory, name).relative_to(root)} {stat.S_IMODE(st.st_mode):04o}")
    return wide


async def test_the_state_dir_is_private_whatever_the_umask(make_daemon, client_of, wait_for):
    old = os.umask(0o022)  # an operator's usual umask, inherited by the daemon
    try:
        daemon = make_daemon()
    finally:
        os.umask(old)
    client = await client_of(daemon)
    job = await wait_for(client, (await client.call("job.submit", prompt="private"))["job_id"])
    assert job["state"] == "succeeded"
    state = daemon.state_dir
    assert {"jobs.sqlite3-wal", "audit.db-wal", "metrics.sqlite3-wal"} <= {p.name for p in state.iterdir()}
    assert readable_by_others(state) == []
    assert stat.S_IMODE(daemon.socket.stat().st_mode) == 0o660  # the socket alone is opened to its group

    await asyncio.to_thread(daemon.terminate)
    os.chmod(state, 0o755)  # as a copy, or an older version under a wide umask, may leave them
    os.chmod(state / "jobs.sqlite3", 0o644)
    os.chmod(state / "metrics.sqlite3", 0o640)
    again = make_daemon(state_from=daemon, config={"model": {"preload": False}})
    assert readable_by_others(state) == []
    log = again.read_log()
    assert "jobs.sqlite3 (was 0644)" in log and "metrics.sqlite3 (was 0640)" in log
    assert (await (await client_of(again)).call("job.get", job_id=job["job_id"]))["state"] == "succeeded"


async def _wait_running(client, job_id: str, min_step: int = 1) -> None:
    await client.call("events.subscribe", topics=["job"])
    while True:
        event = await client.next_event(timeout=120)
        data = event["data"]
        if data.get("job_id") == job_id and data.get("kind") == "progress" and data["step"] >= min_step:
            return


async def test_sigterm_lets_the_running_batch_finish(make_daemon, client_of, wait_for):
    daemon = make_daemon({"daemon": {"shutdown_grace": 120.0}})
    client = await client_of(daemon)
    job_id = (await client.call("job.submit", prompt="finish me", steps=30))["job_id"]
    await _wait_running(client, job_id)
    rc = await asyncio.to_thread(daemon.terminate)
    assert rc == 0
    again = make_daemon(state_from=daemon, config={"model": {"preload": False}})
    client = await client_of(again)
    job = await client.call("job.get", job_id=job_id)
    assert job["state"] == "succeeded" and job["attempts"] == 1


async def test_sigterm_past_the_grace_period_requeues_the_batch(make_daemon, client_of, wait_for):
    daemon = make_daemon({"daemon": {"shutdown_grace": 0.5}})
    client = await client_of(daemon)
    job_id = (await client.call("job.submit", prompt="too slow", width=256, height=256, steps=150))["job_id"]
    await _wait_running(client, job_id)
    started = time.monotonic()
    rc = await asyncio.to_thread(daemon.terminate)
    assert rc == 0 and time.monotonic() - started < 30
    log = daemon.read_log()
    assert "putting it back in the queue" in log
    # The daemon killed its worker on purpose: said plainly, and no ERROR line claiming a crash.
    assert re.search(r"INFO sai\.worker: worker pid \d+ stopped by the daemon \(worker process was killed by "
                     r"SIGKILL\)", log), log
    assert not [line for line in log.splitlines() if " ERROR " in line and "SIGKILL" in line], log
    again = make_daemon(state_from=daemon, config=NO_WORKER)
    client = await client_of(again)
    job = await client.call("job.get", job_id=job_id)
    assert job["state"] == "queued" and job["attempts"] == 0 and job["started_at"] is None


async def test_kill_9_loses_no_job_and_runs_each_exactly_once(make_daemon, client_of, wait_for):
    daemon = make_daemon({"queue": {"max_batch": 1}})
    client = await client_of(daemon)
    running = (await client.call("job.submit", prompt="interrupted", width=256, height=256, steps=60,
                                 priority="critical"))["job_id"]
    queued = [(await client.call("job.submit", prompt=f"waiting {i}", count=1 + i % 2))["job_id"] for i in range(5)]
    await _wait_running(client, running, min_step=2)
    worker_pids = daemon.worker_pids()
    daemon.kill9()
    for pid in worker_pids:  # an orphaned worker sees its stdin close and exits by itself
        for _ in range(200):
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                break
            await asyncio.sleep(0.1)
        else:
            pytest.fail(f"worker {pid} outlived its daemon")
    again = make_daemon(state_from=daemon, config={"queue": {"max_batch": 1}})
    client = await client_of(again)
    # The interrupted job, and perhaps the next one already handed to the worker, go back.
    assert re.search(r"recovered [12] job\(s\)", again.read_log())
    jobs = [await wait_for(client, job_id, timeout=300) for job_id in [running, *queued]]
    assert all(job["state"] == "succeeded" for job in jobs), [j["error"] for j in jobs]
    assert jobs[0]["attempts"] == 2 and all(job["attempts"] == 1 for job in jobs[1:])
    listed = (await client.call("job.list", limit=100))["jobs"]
    assert sorted(j["job_id"] for j in listed) == sorted([running, *queued])
    outputs_dir = again.state_dir / "outputs"
    for job in jobs:  # each image written exactly once, as encrypted file + manifest + signature
        files = sorted(p.name for p in outputs_dir.glob(f"{job['job_id']}-*"))
        assert files == sorted(f"{job['job_id']}-{i}.{suffix}" for i in range(job["params"]["count"])
                               for suffix in ("png.sai", "manifest.json", "manifest.sig"))
        assert (await client.call("output.verify", job_id=job["job_id"]))["ok"]
    assert not list(outputs_dir.glob(".*.tmp*"))


async def test_worker_killed_mid_job_is_restarted_and_the_job_retried(make_daemon, client_of, wait_for):
    daemon = make_daemon()
    client = await client_of(daemon)
    job_id = (await client.call("job.submit", prompt="survive", width=256, height=256, steps=40))["job_id"]
    await _wait_running(client, job_id, min_step=2)
    [worker] = daemon.worker_pids()
    os.kill(worker, signal.SIGKILL)
    job = await wait_for(client, job_id, timeout=300)
    assert job["state"] == "succeeded" and job["attempts"] == 2
    status = await client.call("daemon.status")
    assert status["worker"]["restarts"] >= 0 and status["worker"]["pid"] != worker
    assert re.search(rf"ERROR sai\.worker: worker pid {worker}: worker process was killed by SIGKILL", daemon.read_log())


def test_start_paused_holds_work_until_resume(make_daemon):
    daemon = make_daemon(NO_WORKER)
    out = run_sai("submit", "held", "--json", socket_path=daemon.socket)
    assert out.returncode == 0
    status = run_sai("status", "--json", socket_path=daemon.socket)
    assert '"paused": true' in status.stdout and '"queued": 1' in status.stdout
