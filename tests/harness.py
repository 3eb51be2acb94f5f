"""A real `sai daemon` in a subprocess on a temporary socket: for tests and benchmarks."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from daemon.client import DaemonClient

ROOT = Path(__file__).resolve().parent.parent


def to_toml(config: dict[str, dict[str, Any]]) -> str:
    """`[section]` tables of scalars and lists (JSON literals are valid TOML for those); a table
    value is a `[section."key"]` table of its own (`{"models": {"other": {"path": ...}}}`)."""
    lines = []
    for section, values in config.items():
        lines.append(f"[{section}]")
        lines += [f"{key} = {json.dumps(value)}" for key, value in values.items() if not isinstance(value, dict)]
        for key, table in values.items():
            if isinstance(table, dict):
                lines.append(f"[{section}.{json.dumps(key)}]")
                lines += [f"{inner} = {json.dumps(value)}" for inner, value in table.items()]
    return "\n".join(lines) + "\n"


def merged(*configs: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    for config in configs:
        for section, values in config.items():
            out.setdefault(section, {}).update(values)
    return out


@dataclass
class DaemonProcess:
    socket: Path
    state_dir: Path
    config_file: Path
    log_file: Path
    proc: subprocess.Popen[bytes] | None = None
    clients: list[DaemonClient] = field(default_factory=list)

    @classmethod
    def create(cls, root: Path, config: dict[str, dict[str, Any]], state_dir: Path | None = None,
               model_dir: Path | None = None) -> DaemonProcess:
        """Lay out a config file and state dir under `root`; link a prebuilt tiny model if given."""
        state = state_dir or root / "state"
        (state / "models").mkdir(parents=True, exist_ok=True)
        if model_dir is not None and not (state / "models" / "tiny").exists():
            (state / "models" / "tiny").symlink_to(model_dir)
        config_file = root / "config.toml"
        config_file.write_text(to_toml(config))
        return cls(root / "d.sock", state, config_file, root / "daemon.log")

    def start(self, wait: bool = True, timeout: float = 60.0, env: dict[str, str] | None = None, *,
              program: Sequence[str] = (), cwd: Path = ROOT) -> DaemonProcess:
        """`sai daemon` with `env` added to this process's environment; `program` is the command that
        runs `sai` (default: this interpreter with `-m console.cli`; or the installed script, or one
        behind `setpriv`), started in `cwd`."""
        self._log = self.log_file.open("ab")
        self.proc = subprocess.Popen(
            [*(program or (sys.executable, "-m", "console.cli")), "daemon", "--socket", str(self.socket),
             "--state-dir", str(self.state_dir), "--config", str(self.config_file)],
            stdout=self._log, stderr=subprocess.STDOUT, cwd=cwd,
            env={**os.environ, "SAI_SOCKET": str(self.socket), "XDG_CONFIG_HOME": str(self.socket.parent),
                 **(env or {})})
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

    def kill9(self, workers: bool = False) -> None:
        """SIGKILL the daemon; with `workers`, its worker processes too (the whole box gone at
        once, as a power loss would; alone, a worker outlives its daemon until it sees the pipe close)."""
        assert self.proc is not None
        children = self.worker_pids() if workers else []
        self.proc.kill()
        self.proc.wait(10)
        for pid in children:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)

    def worker_pids(self) -> list[int]:
        """The daemon's worker processes (not its other children: output or audit pools)."""
        assert self.proc is not None
        out = subprocess.run(["pgrep", "-P", str(self.proc.pid), "-f", "daemon.worker.main"],
                             capture_output=True, text=True).stdout
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
        if hasattr(self, "_log"):
            self._log.close()


def run_sai(*args: str, socket_path: Path | None = None, timeout: float = 180) -> subprocess.CompletedProcess[str]:
    """`sai ARGS` in a child process, talking to `socket_path` (never to a socket this process's
    environment names), with no terminal to prompt on; output captured as text."""
    env = {k: v for k, v in os.environ.items() if k != "SAI_SOCKET"}
    if socket_path is not None:
        env["SAI_SOCKET"] = str(socket_path)
    return subprocess.run([sys.executable, "-m", "console.cli", *args], capture_output=True, text=True, cwd=ROOT,
                          env=env, timeout=timeout, stdin=subprocess.DEVNULL)


def build_tiny(target: Path) -> Path:
    """Build the tiny model in a subprocess, so the caller never imports torch."""
    subprocess.run([sys.executable, "-c", "import sys; from pathlib import Path; "
                    "from daemon.models.builders import build; build('tiny', Path(sys.argv[1]))", str(target)],
                   check=True, env={**os.environ, "HF_HUB_OFFLINE": "1"}, capture_output=True)
    return target


LONG_PROMPT = ("a lighthouse at dusk, " * 91)[:2000]
"""As long as a prompt may be (limits.max_prompt_chars)."""


async def submit_long_prompts(client: DaemonClient, count: int) -> set[str]:
    """`count` jobs whose prompts and negative prompts are as long as allowed: their listing takes
    about 5 KB a job, so 300 of them are more than one reply line (1 MiB) holds."""
    return {(await client.call("job.submit", prompt=f"{i} {LONG_PROMPT}"[:2000], negative_prompt=LONG_PROMPT))["job_id"]
            for i in range(count)}
