"""`Type=notify` for real: the real `sai daemon` talks to an AF_UNIX datagram socket given as
`$NOTIFY_SOCKET`, as systemd's manager does, and the test reads what it sends.

READY=1 only once the socket answers; STATUS= with the queue and worker; WATCHDOG=1 at half the
`WATCHDOG_USEC` period while healthy, and none while the worker is stopped (SIGSTOP) or wedged
inside a denoising step; STOPPING=1 at the drain.
"""

from __future__ import annotations

import os
import signal
import socket
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.harness import DaemonProcess

WEDGED = "tests.pipeline_doubles:WedgingPipelineForTests"


class NotifyListener:
    """The manager's end: a datagram socket collecting (time, fields) as they arrive."""

    def __init__(self) -> None:
        self.path = Path(tempfile.mkdtemp(prefix="sai-notify-", dir="/tmp")) / "notify"
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(self.path))
        self.sock.settimeout(0.2)
        self.messages: list[tuple[float, list[str]]] = []
        self._closed = False
        self._thread = threading.Thread(target=self._collect, daemon=True)
        self._thread.start()

    def _collect(self) -> None:
        while not self._closed:
            try:
                data = self.sock.recv(65536)
            except (TimeoutError, OSError):
                continue
            self.messages.append((time.monotonic(), data.decode().split("\n")))

    def fields_since(self, since: float) -> list[str]:
        return [f for t, fields in list(self.messages) if t >= since for f in fields]

    def wait_for(self, field: str, since: float = 0.0, timeout: float = 60.0) -> float:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for t, fields in list(self.messages):
                if t >= since and any(f.startswith(field) for f in fields):
                    return t
            time.sleep(0.05)
        raise AssertionError(f"no {field!r} within {timeout} s; got {self.messages[-10:]}")

    def close(self) -> None:
        self._closed = True
        self._thread.join(2)
        self.sock.close()


@pytest.fixture
def listener() -> Iterator[NotifyListener]:
    made = NotifyListener()
    yield made
    made.close()


def start_notified(make_daemon: object, listener: NotifyListener, **worker: object) -> DaemonProcess:
    daemon: DaemonProcess = make_daemon({"worker": {"heartbeat_seconds": 0.2, **worker}}, start=False)  # type: ignore[operator]
    return daemon.start(wait=False, env={"NOTIFY_SOCKET": str(listener.path), "WATCHDOG_USEC": "1000000"})


def wait_worker_ready(daemon: DaemonProcess, listener: NotifyListener) -> None:
    deadline = time.monotonic() + 120
    while not any("worker ready" in f for f in listener.fields_since(0)):
        assert time.monotonic() < deadline, f"worker never ready: {listener.messages[-5:]}\n{daemon.read_log()}"
        time.sleep(0.1)


def watchdog_pings(listener: NotifyListener, since: float, until: float) -> int:
    return sum(1 for t, fields in list(listener.messages) if since <= t < until and "WATCHDOG=1" in fields)


def test_ready_only_once_the_socket_answers_then_status_and_stopping(make_daemon: object, listener: NotifyListener) -> None:
    daemon = start_notified(make_daemon, listener)
    listener.wait_for("READY=1")
    probe = socket.socket(socket.AF_UNIX)
    probe.connect(str(daemon.socket))  # READY=1 promised a listening socket: no retry allowed here
    probe.close()
    (ready,) = [fields for _, fields in listener.messages if "READY=1" in fields]
    status = next(f for f in ready if f.startswith("STATUS="))
    assert f"serving on {daemon.socket}" in status and "queue running: 0 queued, 0 running" in status
    assert f"MAINPID={daemon.proc.pid}" in ready  # type: ignore[union-attr]
    wait_worker_ready(daemon, listener)
    began = time.monotonic()
    assert daemon.terminate() == 0
    listener.wait_for("STOPPING=1", since=began, timeout=5)
    stopping = next(fields for t, fields in listener.messages if t >= began and "STOPPING=1" in fields)
    assert any(f.startswith("STATUS=draining") for f in stopping)


def test_watchdog_is_fed_only_while_the_worker_is_alive(make_daemon: object, listener: NotifyListener) -> None:
    daemon = start_notified(make_daemon, listener)
    wait_worker_ready(daemon, listener)
    now = time.monotonic()
    time.sleep(2.0)
    assert watchdog_pings(listener, now, now + 2.0) >= 3  # every 0.5 s with WATCHDOG_USEC = 1 s
    (worker,) = daemon.worker_pids()
    os.kill(worker, signal.SIGSTOP)
    try:
        stopped = time.monotonic()
        listener.wait_for("STATUS=unhealthy: worker pid", since=stopped, timeout=10)
        quiet_from = time.monotonic()
        time.sleep(2.0)
        assert watchdog_pings(listener, quiet_from, quiet_from + 2.0) == 0
    finally:
        os.kill(worker, signal.SIGCONT)
    resumed = time.monotonic()
    listener.wait_for("WATCHDOG=1", since=resumed, timeout=10)
    assert "watchdog fed again" in daemon.read_log()


async def test_a_worker_wedged_in_a_step_stops_the_watchdog(make_daemon: object, listener: NotifyListener) -> None:
    daemon = start_notified(make_daemon, listener, pipeline_wrapper=WEDGED, stall_seconds=2.0)
    wait_worker_ready(daemon, listener)
    client = await daemon.client()
    await client.call("job.submit", prompt="wedge the kernel")
    seen = listener.wait_for("STATUS=unhealthy: worker pid", since=time.monotonic(), timeout=30)
    assert any("made no denoising step" in f for f in listener.fields_since(seen))
    quiet_from = time.monotonic()
    time.sleep(1.5)
    assert watchdog_pings(listener, quiet_from, quiet_from + 1.5) == 0
    assert "watchdog not fed: worker pid" in daemon.read_log()
