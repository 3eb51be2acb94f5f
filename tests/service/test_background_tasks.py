"""Background tasks of the real `sai daemon` (uvloop): the audit committer survives overdue
checkpoints, and a task that dies is logged, alerted, shown by `sai status`, and ends the daemon
with a non-zero exit where it cannot keep its promises without the task.

The tasks are killed by tests/service/dying_tasks.py, a test double that runs the daemon's own
code with one loop made to raise on SIGUSR1 (after the timer fix no outside fault reaches them).
"""

from __future__ import annotations

import asyncio
import itertools
import json
import re
import signal
import sqlite3
import sys
import time
from pathlib import Path

import pytest

from tests.configs import NO_WORKER
from tests.harness import DaemonProcess, run_sai

DOUBLE = Path(__file__).with_name("dying_tasks.py")
WORKER_LOADED = {"model": {"preload": True}, "queue": {"start_paused": True}}
EXIT_TASK_FAILED = 70
UNATTENDED_SECONDS = 90.0


def start_with_dying(daemon: DaemonProcess, task: str) -> None:
    daemon.start(program=(sys.executable, str(DOUBLE), task))
    assert run_sai("status", socket_path=daemon.socket).returncode == 0  # serving: every loop is running


def wait_worker_ready(daemon: DaemonProcess, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while json.loads(run_sai("status", "--json", socket_path=daemon.socket).stdout)["worker"]["state"] != "ready":
        assert time.monotonic() < deadline, "the worker did not load the model"
        time.sleep(0.5)


def runs_on_uvloop(daemon: DaemonProcess) -> bool:
    assert daemon.proc is not None
    return "uvloop/loop." in Path(f"/proc/{daemon.proc.pid}/maps").read_text()


def checkpoints(daemon: DaemonProcess) -> list[int]:
    with sqlite3.connect(f"file:{daemon.state_dir / 'audit.db'}?mode=ro", uri=True) as db:
        return [size for (size,) in db.execute("SELECT tree_size FROM audit_checkpoints ORDER BY tree_size")]


@pytest.mark.slow
@pytest.mark.timeout(400)
async def test_sai_daemon_on_uvloop_audits_and_checkpoints_through_overdue_checkpoints(make_daemon, client_of,
                                                                                      wait_for):
    daemon = make_daemon({"audit": {"checkpoint_every_seconds": 1}, "model": {"preload": False}})
    assert runs_on_uvloop(daemon)
    client = await client_of(daemon)
    before = len(checkpoints(daemon))
    # Audited actions now and then, with quiet spells shorter and longer than the checkpoint interval:
    # each spell leaves a checkpoint due, or overdue, when the committer next wakes.
    spells = itertools.cycle([0.05, 0.3, 1.0, 2.5, 0.7, 0.15, 1.6])
    deadline = time.monotonic() + UNATTENDED_SECONDS
    while time.monotonic() < deadline:
        await client.call("queue.pause")
        await client.call("queue.resume")
        await asyncio.sleep(next(spells))
    jobs = [(await client.call("job.submit", prompt=f"after {UNATTENDED_SECONDS:.0f} s, {n}"))["job_id"]
            for n in range(3)]
    for job_id in jobs:
        assert (await wait_for(client, job_id))["state"] == "succeeded"
    verified = await client.call("audit.verify")
    assert verified["ok"], verified
    assert len(checkpoints(daemon)) - before >= UNATTENDED_SECONDS / 4  # one per spell with entries, give or take
    status = run_sai("status", socket_path=daemon.socket)
    assert status.returncode == 0 and "FAILED" not in status.stdout, status.stdout
    assert " died:" not in daemon.read_log() and "Traceback" not in daemon.read_log()
    assert daemon.terminate() == 0


@pytest.mark.parametrize("task", ["audit committer", "job store committer", "dispatcher", "worker reader"])
def test_an_essential_task_that_dies_ends_the_daemon_non_zero_and_the_restart_shows_the_alert(task, make_daemon):
    reader = task == "worker reader"  # one runs per worker process: load the model first
    daemon = make_daemon(WORKER_LOADED if reader else NO_WORKER, start=False)
    start_with_dying(daemon, task)
    if reader:
        wait_worker_ready(daemon)
    assert daemon.proc is not None
    daemon.proc.send_signal(signal.SIGUSR1)
    assert daemon.proc.wait(90) == EXIT_TASK_FAILED
    log = daemon.read_log()
    assert re.search(rf"CRITICAL.*{task} died: InjectedFault: .*the daemon stops \(non-zero exit\)", log), log
    assert "Traceback" in log and "raise InjectedFault" in log
    assert "daemon stopped" in log and not daemon.socket.exists()
    if task == "audit committer":  # the shutdown that hung before: daemon.stop cannot be recorded
        assert "shutdown: recording daemon.stop failed" in log

    restarted = make_daemon(NO_WORKER, state_from=daemon)  # as systemd's Restart=on-failure does
    status = run_sai("status", socket_path=restarted.socket)
    assert re.search(rf"ALERT\s+{task} died: InjectedFault.*\(sai ack \d+\)", status.stdout), status.stdout
    alerts = json.loads(run_sai("alerts", "--json", socket_path=restarted.socket).stdout)["alerts"]
    assert [(a["key"], a["severity"]) for a in alerts if a["key"].startswith("task.")] == \
        [(f"task.{task.replace(' ', '_')}", "critical")]
    assert run_sai("audit", "verify", socket_path=restarted.socket).returncode == 0


async def test_a_monitor_that_dies_is_alerted_and_shown_while_the_daemon_goes_on(make_daemon, client_of, wait_for):
    daemon = make_daemon({"model": {"preload": False}}, start=False)
    start_with_dying(daemon, "monitor")
    assert daemon.proc is not None
    daemon.proc.send_signal(signal.SIGUSR1)
    deadline = time.monotonic() + 30
    while "FAILED" not in (status := run_sai("status", socket_path=daemon.socket)).stdout:
        assert time.monotonic() < deadline, status.stdout
        await asyncio.sleep(0.2)
    assert re.search(r"FAILED\s+monitor died: InjectedFault: .*; sampling, metrics and the alert rules stopped; "
                     r"the daemon goes on without it", status.stdout), status.stdout
    assert re.search(r"ALERT\s+monitor died: InjectedFault", status.stdout), status.stdout
    assert "Traceback" in daemon.read_log()
    client = await client_of(daemon)
    job_id = (await client.call("job.submit", prompt="after the monitor died"))["job_id"]
    assert (await wait_for(client, job_id))["state"] == "succeeded"
    assert daemon.proc.poll() is None
    assert daemon.terminate() == 0


def test_a_batch_runner_that_raises_ends_the_daemon_and_its_job_runs_after_the_restart(make_daemon):
    daemon = make_daemon({"model": {"preload": False}}, start=False)
    daemon.start(program=(sys.executable, str(DOUBLE), "batch runner"))
    submitted = run_sai("submit", "a job whose first batch runner raised", "--json", socket_path=daemon.socket)
    job_id = json.loads(submitted.stdout)["job_id"]
    assert daemon.proc is not None and daemon.proc.wait(120) == EXIT_TASK_FAILED
    assert re.search(r"CRITICAL.*batch runner died: InjectedFault", daemon.read_log())

    restarted = make_daemon({"model": {"preload": False}}, state_from=daemon)
    deadline = time.monotonic() + 120
    while (job := json.loads(run_sai("job", job_id, "--json", socket_path=restarted.socket).stdout))["state"] \
            not in ("succeeded", "failed", "cancelled"):
        assert time.monotonic() < deadline, job
        time.sleep(0.5)
    assert job["state"] == "succeeded", job
    status = run_sai("status", socket_path=restarted.socket).stdout
    assert re.search(r"ALERT\s+batch runner died: InjectedFault", status), status
