"""The pixel stage in a process pool (daemon.outputs.pool): it really runs in another process, the
output is the same as without the pool and verifies, a pool process that dies loses nothing, and
"auto" sizes the pool to the cores the workers leave free."""

from __future__ import annotations

import io
import json
import os
import signal
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import psutil
import pytest
from PIL import Image

from daemon.crypto import OutputError
from daemon.crypto.keys import KeyStore
from daemon.outputs.pipeline import OutputSettings, export_output, protect_image, verify_output
from daemon.outputs.pool import MarkPool, auto_size, pool_size
from tests.harness import DaemonProcess
from tests.outputs.out_helpers import FIXED_TIME, keys_dir, keystore, make_info, out_dir, synthetic  # noqa: F401


@pytest.fixture(scope="module")
def pool() -> Iterator[MarkPool]:
    marks = MarkPool(1)
    yield marks
    marks.close()


def pixels(png: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(png)).convert("RGB"))


def test_marks_run_in_another_process_and_the_output_is_the_same(pool: MarkPool, keystore: KeyStore,
                                                                   out_dir: Path, keys_dir: Path) -> None:
    rgb = synthetic("smooth", 3, 256)
    pooled_dir = out_dir.parent / "pooled"
    pooled_dir.mkdir()
    plain = OutputSettings.defaults(c2pa=False)  # C2PA stamps each manifest uniquely; without it the PNG is byte-exact
    for job_id, settings in (("j20261126-0001", plain), ("j20261126-0002", OutputSettings.defaults())):
        info = make_info(job_id=job_id)
        here = protect_image(rgb, info, keystore, settings, out_dir)
        marked = pool.mark(rgb, info, settings, FIXED_TIME)
        assert marked.pid != os.getpid()
        assert marked.invisible and marked.spec is not None
        pooled = protect_image(rgb, info, keystore, settings, pooled_dir, marked)
        assert verify_output(pooled.sai_path, pooled_dir, keys_dir)["ok"]
        assert here.manifest["watermark"] == pooled.manifest["watermark"]
        assert here.fingerprint == pooled.fingerprint
        assert np.array_equal(pixels(export_output(out_dir, job_id, 0, keystore)),
                              pixels(export_output(pooled_dir, job_id, 0, keystore)))
        if settings is plain:
            assert here.png_sha256 == pooled.png_sha256


def test_prompt_never_reaches_the_pool(pool: MarkPool) -> None:
    """Only what a mark draws goes to the pool process (no prompt, no params; keys never)."""
    sent: list[object] = []

    class Recording:
        def __init__(self, inner: object) -> None:
            self.inner = inner

        def submit(self, fn: object, rgb: object, info: object, *rest: object) -> object:
            sent.append(info)
            return self.inner.submit(fn, rgb, info, *rest)  # type: ignore[attr-defined]

    inner = pool._pool
    pool._pool = Recording(inner)  # type: ignore[assignment]
    try:
        pool.mark(synthetic("smooth", 4, 64), make_info(), OutputSettings.defaults(), FIXED_TIME)
    finally:
        pool._pool = inner
    (info,) = sent
    assert info.prompt == "" and info.negative_prompt == "" and info.params == {}  # type: ignore[attr-defined]


def test_a_pool_process_killed_loses_nothing(keystore: KeyStore, out_dir: Path, keys_dir: Path) -> None:
    marks = MarkPool(1)
    try:
        rgb = synthetic("smooth", 5, 256)
        settings = OutputSettings.defaults()
        first = marks.mark(rgb, make_info(), settings, FIXED_TIME)
        os.kill(first.pid, signal.SIGKILL)
        deadline = time.monotonic() + 30
        while first.pid in marks.pids() and time.monotonic() < deadline:
            time.sleep(0.05)  # the pool notices its dead process (otherwise it breaks on the next call)
        marked = marks.mark(rgb, make_info(), settings, FIXED_TIME)
        assert marks.restarts == 1 and marked.pid != first.pid
        out = protect_image(rgb, make_info(), keystore, settings, out_dir, marked)
        assert verify_output(out.sai_path, out_dir, keys_dir)["ok"]
    finally:
        marks.close()


def test_a_pool_that_keeps_dying_fails_the_output_clearly(monkeypatch: pytest.MonkeyPatch) -> None:
    """Test double for a fault we cannot cause on demand twice in a row: every pool process exits
    as soon as it is handed work (`os._exit` in the process, a real death)."""
    from daemon.outputs import pool as module

    monkeypatch.setattr(module, "mark_in_process", _dies_at_once)
    marks = MarkPool(1)
    try:
        with pytest.raises(OutputError, match="died twice marking image 0 of j20261126-0001"):
            marks.mark(synthetic("smooth", 6, 64), make_info(), OutputSettings.defaults(), FIXED_TIME)
        assert marks.restarts == 2
    finally:
        marks.close()


def _dies_at_once(*args: object) -> None:
    os._exit(1)


def test_auto_size_leaves_the_workers_their_cores() -> None:
    assert auto_size(2, [("cpu", 0)]) == 0          # torch's default threads use every core
    assert auto_size(8, [("cpu", 0)]) == 0
    assert auto_size(8, [("cpu", 2), ("cpu", 2)]) == 4
    assert auto_size(16, [("cuda", 0)] * 4) == 8    # at most MOST_AUTO
    assert auto_size(4, [("cuda", 0)] * 2) == 2
    assert pool_size(0, 16, [("cuda", 0)]) == 0     # 0: marks in the daemon's threads
    assert pool_size(3, 2, [("cpu", 0)]) == 3


def pool_processes(daemon: DaemonProcess) -> list[psutil.Process]:
    assert daemon.proc is not None
    return [child for child in psutil.Process(daemon.proc.pid).children(recursive=True)
            if "multiprocessing" in " ".join(child.cmdline()) and "resource_tracker" not in " ".join(child.cmdline())]


@pytest.mark.timeout(400)
async def test_a_daemon_with_a_pool_marks_there_and_survives_a_killed_pool_process(make_daemon, client_of, wait_for):
    daemon = make_daemon({"outputs": {"pixel_processes": 1}})
    client = await client_of(daemon)
    state = daemon.state_dir
    for round_ in range(2):
        job_id = (await client.call("job.submit", prompt=f"pooled {round_}", width=256, height=256, steps=2))["job_id"]
        job = await wait_for(client, job_id, timeout=300)
        assert job["state"] == "succeeded", job["error"]
        report = verify_output(job_id, state / "outputs", state / "keys")
        assert report["ok"], report
        assert json.loads(Path(report["outputs"][0]["manifest"]).read_text())["watermark"]["invisible"]
        (process,) = pool_processes(daemon)
        assert process.nice() >= 10  # out of the generator's way
        if round_ == 0:
            process.send_signal(signal.SIGKILL)
            process.wait(10)
    assert "drawn in 1 pool process" in daemon.read_log()
    assert "output pool process died" in daemon.read_log()


NO_SHARED_MEMORY = ["unshare", "--mount", "sh", "-c", 'mount -t tmpfs -o ro tmpfs /dev/shm && exec "$@"', "sh",
                    sys.executable, "-m", "console.cli"]
"""`sai daemon` in a mount namespace whose /dev/shm is read-only: multiprocessing cannot make the
pool's semaphores, as on a host without /dev/shm (or a service user that cannot run the interpreter)."""


@pytest.mark.timeout(300)
async def test_a_pool_that_cannot_start_leaves_the_marks_in_the_daemon_s_threads(make_daemon, client_of, wait_for):
    daemon = make_daemon({"outputs": {"pixel_processes": 2}}, start=False).start(program=NO_SHARED_MEMORY)
    client = await client_of(daemon)
    log = daemon.read_log()
    assert "cannot start the 2 pixel pool process(es) ([outputs] pixel_processes): [Errno 30] Read-only file " \
           "system" in log and "drawn in the daemon's threads instead" in log, log
    job = await wait_for(client, (await client.call("job.submit", prompt="no pool", width=256, height=256,
                                                                steps=2))["job_id"])
    assert job["state"] == "succeeded", job["error"]
    report = verify_output(job["job_id"], daemon.state_dir / "outputs", daemon.state_dir / "keys")
    assert report["ok"] and json.loads(Path(report["outputs"][0]["manifest"]).read_text())["watermark"]["invisible"]
    assert pool_processes(daemon) == []
    assert daemon.terminate() == 0


@pytest.mark.timeout(300)
async def test_a_killed_daemon_leaves_no_pool_process_behind(make_daemon, client_of, wait_for):
    """SIGKILL gives the daemon no chance to close its pool; its processes must still go, not sit
    orphaned with their memory (found after the crash suite: one left per kill)."""
    daemon = make_daemon({"outputs": {"pixel_processes": 1}})
    client = await client_of(daemon)
    job_id = (await client.call("job.submit", prompt="pooled", width=256, height=256, steps=2))["job_id"]
    assert (await wait_for(client, job_id, timeout=240))["state"] == "succeeded"
    left = pool_processes(daemon) + [child for child in psutil.Process(daemon.proc.pid).children(recursive=True)
                                     if "resource_tracker" in " ".join(child.cmdline())]
    assert len(left) == 2
    daemon.kill9()
    _, alive = psutil.wait_procs(left, timeout=10)
    assert not alive, [p.cmdline() for p in alive]
