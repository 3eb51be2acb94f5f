"""Fault suite: each fault caused for real, then the same three questions. Does an operator get a
clear error or alert? Does every job queued before the fault end exactly once after it clears?
Does the daemon keep serving (or, where refusing to start is the only safe answer, refuse with a
message naming the file and leave the state as it was)?

Not repeated here: a worker killed during a one-job batch, crash loops and poison jobs
(tests/service/test_lifecycle.py, test_self_healing.py), a single job's out-of-memory split and
too-big image (tests/service/test_memory.py).
"""

from __future__ import annotations

import asyncio
import os
import pickle
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from daemon.client import DaemonClient
from daemon.exitcodes import ExitCode
from tests.configs import NO_WORKER
from tests.harness import ROOT, DaemonProcess
from tests.reliability.rel_helpers import (
    IN_MOVED_TO,
    OUTPUT_SUFFIXES,
    DirWatch,
    export_png,
    hold_exclusive_lock,
    limit_file_size,
    output_files,
    small_tmpfs,
    snapshot,
    temp_files,
)

pytestmark = pytest.mark.timeout(300)



async def submit(client: DaemonClient, **params: Any) -> str:
    return (await client.call("job.submit", **{"prompt": "fault suite", **params}))["job_id"]


async def wait_until(predicate: Any, timeout: float, what: str, interval: float = 0.1) -> Any:
    """Await `predicate()` (a coroutine function) until it returns something truthy."""
    deadline = time.monotonic() + timeout
    while True:
        value = await predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what}: not within {timeout:.0f} s")
        await asyncio.sleep(interval)


async def open_alert(client: DaemonClient, key: str) -> dict[str, Any] | None:
    alerts = (await client.call("alerts.list", state="active"))["alerts"]
    return next((a for a in alerts if a["key"] == key), None)


async def ended_once_with_outputs(client: DaemonClient, wait_for: Any, daemon: DaemonProcess,
                                  job_ids: list[str]) -> list[dict[str, Any]]:
    """Each job succeeded, is listed once, and has exactly `count` outputs that export and verify;
    the outputs directory holds exactly those files and no temp file."""
    jobs = [await wait_for(client, job_id, timeout=240) for job_id in job_ids]
    assert [job["state"] for job in jobs] == ["succeeded"] * len(jobs), [job["error"] for job in jobs]
    listed = [job["job_id"] for job in (await client.call("job.list", limit=1000))["jobs"]]
    assert all(listed.count(job_id) == 1 for job_id in job_ids)
    for job in jobs:
        assert (await client.call("output.verify", job_id=job["job_id"]))["ok"]
        for record in job["outputs"]:
            png, digest = await export_png(client, job["job_id"], record["index"])
            assert png.startswith(b"\x89PNG") and digest == record["png_sha256"]
    outputs = output_files(daemon.state_dir / "outputs")
    for job in jobs:
        assert outputs.get(job["job_id"]) == {i: set(OUTPUT_SUFFIXES) for i in range(job["params"]["count"])}
    assert not temp_files(daemon.state_dir / "outputs")
    return jobs


# -- the worker ------------------------------------------------------------------------------------


async def test_worker_sigkill_mid_batch_retries_the_running_batch_not_the_waiting_one(make_daemon, client_of,
                                                                                     wait_for):
    daemon = make_daemon({"defaults": {"width": 128, "height": 128, "steps": 12},
                          "queue": {"start_paused": True, "max_batch": 3}, "worker": {"crash_loop_count": 10}})
    client = await client_of(daemon)
    ids = [await submit(client, count=count, seed=i) for i, count in enumerate((1, 2, 2, 1, 1, 1))]
    await client.call("events.subscribe", topics=["job", "queue"])
    await client.call("queue.resume")
    running = set(ids[:2])  # 3 images: the first batch; the next one waits in the worker's queue
    while True:
        data = (await client.next_event(timeout=120))["data"]
        if data.get("kind") == "progress" and data["job_id"] in running:
            break
    [worker] = daemon.worker_pids()
    os.kill(worker, signal.SIGKILL)
    jobs = await ended_once_with_outputs(client, wait_for, daemon, ids)
    assert [job["attempts"] for job in jobs] == [2, 2, 1, 1, 1, 1]
    crashes = [a for a in (await client.call("alerts.list", state="all"))["alerts"] if a["key"] == "worker.crash"]
    assert crashes and "killed by SIGKILL" in crashes[0]["message"]
    status = await client.call("daemon.status")
    assert status["worker"]["pid"] not in (None, worker) and status["worker"]["restarts"] == 1


async def test_out_of_memory_in_a_batch_of_several_jobs_splits_it_and_each_job_gets_its_images(
        make_daemon, client_of, wait_for):
    daemon = make_daemon({"model": {"memory_headroom_mb": 300, "threads": 1},
                          "queue": {"max_batch": 8, "start_paused": True},
                          "performance": {"vae_slicing_above_batch": 64}})  # 8 decoded at once: too big
    client = await client_of(daemon)
    ids = [await submit(client, width=256, height=256, steps=2, count=count) for count in (3, 3, 2)]
    await client.call("queue.resume")
    jobs = await ended_once_with_outputs(client, wait_for, daemon, ids)
    assert len({job["started_at"] for job in jobs}) == 1, "the three jobs ran as one batch"
    assert "out of memory with 8 images of 256x256; retrying as 4 + 4" in daemon.read_log()
    status = await client.call("daemon.status")
    assert status["worker"]["restarts"] == 0 and all(job["attempts"] == 1 for job in jobs)


async def test_daemon_killed_mid_outputs_on_a_jobs_last_attempt_fails_it_and_leaves_no_file(make_daemon, client_of,
                                                                                            wait_for):
    """Image 0 of two complete on disk, then SIGKILL: with no attempt left the job fails on restart,
    and the image no client was ever given is removed; the job queued behind it still runs."""
    daemon = make_daemon({"queue": {"max_attempts": 1}})
    client = await client_of(daemon)
    watch = DirWatch(daemon.state_dir / "outputs", IN_MOVED_TO)
    try:
        doomed = await submit(client, count=2, width=128, height=128, steps=30)  # a second or more to generate
        assert daemon.proc is not None
        trigger = asyncio.create_task(asyncio.to_thread(
            watch.fire_on, lambda name: name == f"{doomed}-0.manifest.json", daemon.proc.kill, 120))
        await wait_for(client, doomed, states=("running",))
        await client.call("queue.pause")  # so the job behind is not handed to the worker (started) as well
        behind = await submit(client)
        fired = await trigger
    finally:
        watch.close()
    assert fired and daemon.proc.wait(30) == -signal.SIGKILL
    assert set(output_files(daemon.state_dir / "outputs").get(doomed, {})) == {0}
    again = make_daemon({"queue": {"max_attempts": 1}}, state_from=daemon)
    client = await client_of(again)
    job = await wait_for(client, doomed)
    assert job["state"] == "failed" and "interrupted 1 times while running" in job["error"]
    assert doomed not in output_files(again.state_dir / "outputs")
    assert "removing the files of an interrupted attempt" in again.read_log()
    await client.call("queue.resume")
    await ended_once_with_outputs(client, wait_for, again, [behind])


# -- the outputs filesystem ------------------------------------------------------------------------

NO_DISK_REFUSAL = {"alerts": {"disk_refuse_below_gib": 0.0}}


async def blocked_by_full_disk(client: DaemonClient, daemon: DaemonProcess, ids: list[str], reason: str) -> None:
    """The jobs whose outputs could not be written are back in the queue, uncharged, with nothing of
    them on disk; the queue is paused; a critical alert names the directory and the reason."""
    alert = await wait_until(lambda: open_alert(client, "outputs.no_space"), 120, "outputs.no_space alert")
    assert alert["severity"] == "critical" and reason in alert["message"]
    assert str(daemon.state_dir / "outputs") in alert["message"] and "sai resume" in alert["message"]
    status = await client.call("daemon.status")
    assert status["queue"]["paused"] is True and status["worker"]["state"] in ("ready", "busy")

    async def all_back() -> list[dict[str, Any]] | None:
        jobs = [await client.call("job.get", job_id=job_id) for job_id in ids]
        return jobs if all(job["state"] == "queued" for job in jobs) else None

    jobs = await wait_until(all_back, 120, "every job whose outputs failed back in the queue")
    assert [job["attempts"] for job in jobs] == [0] * len(ids)
    on_disk = output_files(daemon.state_dir / "outputs")
    assert not any(job_id in on_disk for job_id in ids), on_disk
    assert "put back in the queue and the queue paused" in daemon.read_log()


async def test_outputs_filesystem_full_pauses_and_loses_nothing(make_daemon, client_of, wait_for):
    """A real small filesystem (tmpfs) under outputs/, filled until the second image of a job
    cannot be written; freeing space and resuming finishes every job once."""
    daemon = make_daemon({**NO_DISK_REFUSAL, "queue": {"max_batch": 4}}, start=False)
    outputs = daemon.state_dir / "outputs"
    with small_tmpfs(outputs, 2048) as mounted:
        if not mounted:
            pytest.skip("mount is not permitted here; test_outputs_file_size_limit covers the same fault")
        daemon.start()
        client = await client_of(daemon)
        first = await submit(client)
        await wait_for(client, first)
        stats = os.statvfs(outputs)
        per_image = (stats.f_blocks - stats.f_bfree) * stats.f_frsize
        filler = outputs / ".filler"
        filler.write_bytes(b"\0" * (stats.f_bavail * stats.f_frsize - per_image * 3 // 2))
        await client.call("queue.pause")
        ids = [await submit(client, count=2), await submit(client)]  # one batch: 3 images, room for 1.5
        await client.call("queue.resume")
        await blocked_by_full_disk(client, daemon, ids, "No space left on device")
        assert "removing the files of an output that failed" in daemon.read_log()
        filler.unlink()
        await client.call("queue.resume")
        await ended_once_with_outputs(client, wait_for, daemon, [first, *ids])
        assert await open_alert(client, "outputs.no_space") is None


async def test_outputs_file_size_limit_pauses_and_loses_nothing(make_daemon, client_of, wait_for):
    """Where mounting is not allowed: RLIMIT_FSIZE on the running daemon makes its write of a large
    output fail with EFBIG, as a full disk fails it with ENOSPC. The limit sits above every
    database file, below a 768x768 output (about 1.4 MiB)."""
    daemon = make_daemon({**NO_DISK_REFUSAL, "queue": {"max_batch": 4}})
    client = await client_of(daemon)
    first = await submit(client)
    await wait_for(client, first)
    limit = 2**20
    biggest = max(p.stat().st_size for p in daemon.state_dir.rglob("*") if p.is_file())
    assert biggest < limit // 2, f"a state file is already {biggest} bytes"
    assert daemon.proc is not None
    limit_file_size(daemon.proc.pid, limit)
    await client.call("queue.pause")
    ids = [await submit(client, width=768, height=768, steps=2) for _ in range(2)]
    await client.call("queue.resume")
    await blocked_by_full_disk(client, daemon, ids, "File too large")
    limit_file_size(daemon.proc.pid, None)
    await client.call("queue.resume")
    await ended_once_with_outputs(client, wait_for, daemon, [first, *ids])
    assert await open_alert(client, "outputs.no_space") is None


async def test_an_output_path_taken_by_a_directory_fails_that_job_alone_and_its_batch_mates_finish(
        make_daemon, client_of, wait_for):
    """A writer of the state dir puts a directory where one job's manifest goes: that job fails
    naming the path, the three jobs it shared a batch with get their outputs, audited, and the
    daemon goes on serving."""
    daemon = make_daemon({"queue": {"max_batch": 4, "start_paused": True}})
    client = await client_of(daemon)
    ids = [await submit(client, seed=i) for i in range(4)]
    blocked = daemon.state_dir / "outputs" / f"{ids[1]}-0.manifest.json"
    (blocked / "inside").mkdir(parents=True)
    await client.call("queue.resume")
    jobs = [await wait_for(client, job_id, timeout=240) for job_id in ids]
    assert len({job["started_at"] for job in jobs}) == 1, "the four jobs ran as one batch"
    assert [job["state"] for job in jobs] == ["succeeded", "failed", "succeeded", "succeeded"]
    assert jobs[1]["error"].startswith("writing outputs failed") and str(blocked) in jobs[1]["error"]
    on_disk = output_files(daemon.state_dir / "outputs")
    for job in (jobs[0], *jobs[2:]):
        assert (await client.call("output.verify", job_id=job["job_id"]))["ok"]
        assert on_disk[job["job_id"]] == {0: set(OUTPUT_SUFFIXES)}
    assert not any(path.name.startswith(ids[1]) and path != blocked
                   for path in (daemon.state_dir / "outputs").iterdir())
    entries = (await client.call("audit.tail", limit=200))["entries"]
    written = [e["subject"] for e in entries if e["action"] == "output.write"]
    assert sorted(written) == sorted([ids[0], *ids[2:]])
    assert not temp_files(daemon.state_dir / "outputs")
    assert "could not remove what was written of its outputs" in daemon.read_log()
    blocked.joinpath("inside").rmdir()
    blocked.rmdir()
    await ended_once_with_outputs(client, wait_for, daemon, [await submit(client, seed=9)])


# -- the jobs database -----------------------------------------------------------------------------


async def test_jobs_database_locked_by_another_process_delays_writes_and_loses_nothing(
        make_daemon, client_of, wait_for):
    daemon = make_daemon({"defaults": {"width": 128, "height": 128, "steps": 12}})
    client = await client_of(daemon)
    await wait_for(client, await submit(client, steps=2))  # the worker is up
    running = await submit(client)
    holder = hold_exclusive_lock(daemon.state_dir / "jobs.sqlite3", seconds=8.0)
    try:
        during = asyncio.create_task(submit(client, count=2))
        alert = await wait_until(lambda: open_alert(client, "jobs_db.locked"), 30, "jobs_db.locked alert")
        assert alert["severity"] == "critical" and "jobs.sqlite3 is locked by another process" in alert["message"]
        status = await client.call("daemon.status")
        assert holder.poll() is None, "daemon.status was answered only after the lock was released"
        assert status["worker"]["state"] in ("ready", "busy")
        assert not during.done(), "a submit cannot be answered before its job is committed"
    finally:
        assert holder.wait(30) == 0
    job_ids = [running, await asyncio.wait_for(during, 60)]
    await ended_once_with_outputs(client, wait_for, daemon, job_ids)
    await wait_until(lambda: _no_alert(client, "jobs_db.locked"), 30, "jobs_db.locked cleared")
    log = daemon.read_log()
    assert "is locked by another process" in log and "writable again" in log
    assert "job.submit failed" not in log and "internal error" not in log


async def test_audit_log_locked_by_another_process_delays_audited_actions_and_loses_nothing(
        make_daemon, client_of, wait_for):
    daemon = make_daemon({"defaults": {"width": 128, "height": 128, "steps": 2}})
    client = await client_of(daemon)
    await wait_for(client, await submit(client))  # the worker is up
    holder = hold_exclusive_lock(daemon.state_dir / "audit.db", seconds=9.0)
    try:
        during = asyncio.create_task(submit(client, prompt="audited while locked"))
        alert = await wait_until(lambda: open_alert(client, "audit_db.locked"), 30, "audit_db.locked alert")
        assert alert["severity"] == "critical" and "audit.db is locked by another process" in alert["message"]
        assert (await client.call("daemon.status"))["queue"]["queued"] == 0  # reads go on; nothing unaudited
        assert holder.poll() is None, "the daemon answered only after the lock was released"
        assert not during.done(), "a submit is audited before its job is stored (write-ahead)"
    finally:
        assert holder.wait(30) == 0
    job_id = await asyncio.wait_for(during, 60)
    assert (await wait_for(client, job_id, timeout=120))["state"] == "succeeded"
    await wait_until(lambda: _no_alert(client, "audit_db.locked"), 30, "audit_db.locked cleared")
    assert (await client.call("audit.verify", deep=True))["ok"]
    entries = (await client.call("audit.tail", subject=job_id, limit=50))["entries"]
    assert [e["action"] for e in entries if e["action"] == "job.submit"] == ["job.submit"]
    raised = (await client.call("audit.tail", action="alert.raise", limit=50))["entries"]
    assert any(e["details"]["key"] == "audit_db.locked" for e in raised)
    log = daemon.read_log()
    assert "is locked by another process" in log and "audit log is writable again" in log
    assert "audit commit failed" not in log and "internal error" not in log


async def _no_alert(client: DaemonClient, key: str) -> bool:
    return await open_alert(client, key) is None


# -- keys ------------------------------------------------------------------------------------------


def _truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[:7])


def _scribble(path: Path) -> None:
    path.write_bytes(b"-----BEGIN PRIVATE KEY-----\nnot a key\n-----END PRIVATE KEY-----\n")


CORRUPTIONS = {
    "signing key not PEM": ("signing.key", _scribble, "is damaged: not a readable PEM private key"),
    "key-encryption key truncated": ("kek/*.key", _truncate, "is 7 bytes, expected 32"),
    "key index not JSON": ("keys.json", _truncate, "cannot read"),
}


@pytest.mark.parametrize("corruption", list(CORRUPTIONS))
async def test_corrupt_key_file_refuses_to_start_naming_it_and_changes_nothing(corruption, make_daemon, client_of):
    daemon = make_daemon(NO_WORKER)
    client = await client_of(daemon)
    ids = [await submit(client, seed=i) for i in range(2)]
    await client.close()
    assert daemon.terminate() == 0
    pattern, corrupt, reason = CORRUPTIONS[corruption]
    [key_file] = (daemon.state_dir / "keys").glob(pattern)
    original = key_file.read_bytes()
    corrupt(key_file)
    before = snapshot(daemon.state_dir)
    refused = subprocess.run([sys.executable, "-m", "console.cli", "daemon", "--socket", str(daemon.socket),
                              "--state-dir", str(daemon.state_dir), "--config", str(daemon.config_file)],
                             capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert refused.returncode == ExitCode.NOT_STARTED, refused.stderr[-2000:]
    assert "not starting" in refused.stderr and str(key_file) in refused.stderr and reason in refused.stderr
    assert "Traceback" not in refused.stderr
    assert snapshot(daemon.state_dir) == before, "a refused start changed the state directory"
    assert not daemon.socket.exists()
    key_file.write_bytes(original)
    again = make_daemon(NO_WORKER, state_from=daemon)
    client = await client_of(again)
    jobs = [await client.call("job.get", job_id=job_id) for job_id in ids]
    assert [job["state"] for job in jobs] == ["queued", "queued"]
    assert (await client.call("audit.verify", deep=True))["ok"]


# -- the model directory ---------------------------------------------------------------------------


class _Unpickled:
    """A pickle that creates `marker` when loaded: proof of whether pickled weights are ever read."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Any, ...]:
        return (open, (str(self.marker), "w"))


@pytest.mark.parametrize("damage", ["missing weights", "pickled weights"])
async def test_broken_model_directory_alerts_keeps_jobs_and_recovers_once_fixed(damage, make_daemon, client_of,
                                                                                 wait_for, tiny_model, tmp_path):
    model = tmp_path / "model"
    shutil.copytree(tiny_model, model)
    weights = model / "unet" / "diffusion_pytorch_model.safetensors"
    kept = tmp_path / "unet.safetensors"
    shutil.move(weights, kept)
    marker = tmp_path / "unpickled"
    if damage == "pickled weights":
        (model / "unet" / "diffusion_pytorch_model.bin").write_bytes(pickle.dumps(_Unpickled(marker)))
    daemon = make_daemon({"model": {"path": str(model), "threads": 1}, "worker": {"max_backoff": 1.0}})
    client = await client_of(daemon)
    job_id = await submit(client)
    alert = await wait_until(lambda: open_alert(client, "worker.load"), 120, "worker.load alert")
    status = await client.call("daemon.status")
    assert alert["severity"] == "critical" and status["worker"]["state"] in ("failed", "starting")  # retrying
    if damage == "pickled weights":
        assert "diffusion_pytorch_model.bin: pickled weights are refused" in status["worker"]["last_error"]
    else:
        assert "no file named diffusion_pytorch_model.safetensors" in status["worker"]["last_error"]
    assert str(model / "unet") in status["worker"]["last_error"] and str(model / "unet") in alert["message"]
    assert (await client.call("job.get", job_id=job_id))["state"] == "queued"
    shutil.move(kept, weights)  # fixed; a pickled file left beside it is never read
    await ended_once_with_outputs(client, wait_for, daemon, [job_id])
    assert not marker.exists(), "pickled weights were loaded"
    await wait_until(lambda: _no_alert(client, "worker.load"), 30, "worker.load cleared")


