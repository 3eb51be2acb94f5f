"""Shared fixtures: the tiny model built once, and real daemons on temporary sockets.

A daemon here is the real `sai daemon` in its own process (so tests can SIGTERM or kill -9 it),
with a temp state dir, a temp socket and a config file holding the test's overrides.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, AsyncIterator, Callable, Iterator

import pytest

from daemon.client import DaemonClient

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_TEST_CONFIG: dict[str, dict[str, Any]] = {
    "defaults": {"width": 64, "height": 64, "steps": 4},
    "model": {"threads": 1},
}


def _toml(config: dict[str, dict[str, Any]]) -> str:
    lines = []
    for section, values in config.items():
        lines.append(f"[{section}]")
        lines += [f"{key} = {json.dumps(value)}" for key, value in values.items()]
    return "\n".join(lines) + "\n"


def merged(*configs: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    for config in configs:
        for section, values in config.items():
            out.setdefault(section, {}).update(values)
    return out


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny model, built once per session in a subprocess (torch stays out of the tests)."""
    target = tmp_path_factory.mktemp("models") / "tiny"
    subprocess.run([sys.executable, "-c", "import sys; from pathlib import Path; "
                    "from daemon.models.builders import build; build('tiny', Path(sys.argv[1]))", str(target)],
                   check=True, env={**os.environ, "HF_HUB_OFFLINE": "1"}, capture_output=True)
    return target


@dataclass
class DaemonProcess:
    socket: Path
    state_dir: Path
    config_file: Path
    log_file: Path
    proc: subprocess.Popen[bytes] | None = None
    clients: list[DaemonClient] = field(default_factory=list)

    def start(self, wait: bool = True, timeout: float = 60.0) -> "DaemonProcess":
        self.log = self.log_file.open("ab")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "console.cli", "daemon", "--socket", str(self.socket),
             "--state-dir", str(self.state_dir), "--config", str(self.config_file)],
            stdout=self.log, stderr=subprocess.STDOUT, cwd=ROOT,
            env={**os.environ, "SAI_SOCKET": str(self.socket), "XDG_CONFIG_HOME": str(self.state_dir.parent)})
        if wait:
            self.wait_answering(timeout)
        return self

    def wait_answering(self, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc is not None and self.proc.poll() is not None:
                raise RuntimeError(f"daemon exited with {self.proc.returncode}:\n{self.read_log()}")
            probe = socket.socket(socket.AF_UNIX)
            try:
                probe.connect(str(self.socket))
                return
            except OSError:
                time.sleep(0.05)
            finally:
                probe.close()
        raise TimeoutError(f"daemon did not answer within {timeout} s:\n{self.read_log()}")

    def read_log(self) -> str:
        return self.log_file.read_text(errors="replace") if self.log_file.exists() else ""

    async def client(self) -> DaemonClient:
        client = await DaemonClient.connect(self.socket)
        self.clients.append(client)
        return client

    def terminate(self, timeout: float = 60.0) -> int:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout)

    def kill9(self) -> None:
        assert self.proc is not None
        self.proc.kill()
        self.proc.wait(10)

    def worker_pids(self) -> list[int]:
        assert self.proc is not None
        out = subprocess.run(["pgrep", "-P", str(self.proc.pid)], capture_output=True, text=True).stdout
        return [int(pid) for pid in out.split()]

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            children = self.worker_pids()
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
            for pid in children:
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
        if hasattr(self, "log"):
            self.log.close()


DaemonFactory = Callable[..., DaemonProcess]


@pytest.fixture
def make_daemon(tiny_model: Path) -> Iterator[DaemonFactory]:
    """`make_daemon(config={...}, start=True)`: a real daemon on a temporary socket and state dir."""
    made: list[DaemonProcess] = []
    roots: list[Path] = []

    def factory(config: dict[str, dict[str, Any]] | None = None, start: bool = True,
                state_from: DaemonProcess | None = None) -> DaemonProcess:
        root = Path(tempfile.mkdtemp(prefix="sai-", dir="/tmp"))  # short: socket paths are limited to 107 bytes
        roots.append(root)
        state = state_from.state_dir if state_from else root / "state"
        (state / "models").mkdir(parents=True, exist_ok=True)
        if not (state / "models" / "tiny").exists():
            (state / "models" / "tiny").symlink_to(tiny_model)
        config_file = root / "config.toml"
        config_file.write_text(_toml(merged(DEFAULT_TEST_CONFIG, config or {})))
        daemon = DaemonProcess(root / "d.sock", state, config_file, root / "daemon.log")
        made.append(daemon)
        return daemon.start() if start else daemon

    yield factory
    for daemon in made:
        daemon.stop()
    for root in roots:
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture
async def client_of() -> AsyncIterator[Callable[[DaemonProcess], Any]]:
    opened: list[DaemonClient] = []

    async def connect(daemon: DaemonProcess) -> DaemonClient:
        client = await DaemonClient.connect(daemon.socket)
        opened.append(client)
        return client

    yield connect
    for client in opened:
        await client.close()


async def wait_job(client: DaemonClient, job_id: str, states: tuple[str, ...] = ("succeeded", "failed", "cancelled"),
                   timeout: float = 120.0) -> dict[str, Any]:
    """Poll job.get until the job reaches one of `states`."""
    deadline = time.monotonic() + timeout
    while True:
        job = await client.call("job.get", job_id=job_id)
        if job["state"] in states:
            return job
        if time.monotonic() > deadline:
            raise TimeoutError(f"{job_id} still {job['state']} after {timeout} s")
        await asyncio.sleep(0.05)


@pytest.fixture
def wait_for() -> Callable[..., Any]:
    return wait_job
