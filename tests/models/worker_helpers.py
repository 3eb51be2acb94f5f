"""The real worker process (daemon.worker.main, started as the daemon starts it) under `unshare -n`:
a network namespace with no network at all, so every load here is proven offline."""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from daemon.worker import launch
from daemon.worker.ipc import pack

TINY_FAMILIES = ("tiny", "tiny-sdxl", "tiny-sd3", "tiny-flux", "tiny-pixart")


def build_in_subprocess(name: str, target: Path) -> Path:
    """A built-in model built in a child (the test process never imports torch)."""
    subprocess.run([sys.executable, "-c", "import sys; from pathlib import Path; from daemon.models.builders import "
                    "build; build(sys.argv[1], Path(sys.argv[2]))", name, str(target)],
                   check=True, env={**os.environ, "HF_HUB_OFFLINE": "1"}, capture_output=True, timeout=300)
    return target


def write_single_in_subprocess(family: str, model_dir: Path, target: Path) -> Path:
    subprocess.run([sys.executable, "-c", "import sys; from pathlib import Path; from daemon.models.original import "
                    "write_single_file; write_single_file(sys.argv[1], Path(sys.argv[2]), Path(sys.argv[3]))",
                    family, str(model_dir), str(target)],
                   check=True, env={**os.environ, "HF_HUB_OFFLINE": "1"}, capture_output=True, timeout=300)
    return target


class OfflineWorker:
    """One worker process in a namespace without network; `send` commands, `expect` events."""

    def __init__(self, spec: dict[str, Any]) -> None:
        self.process = subprocess.Popen(
            ["unshare", "-n", *launch.command({"threads": 1, "heartbeat_seconds": 60, **spec})],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=launch.WORKDIR,
            env=launch.child_environment(os.environ))
        self.events: list[dict[str, Any]] = []

    def send(self, command: dict[str, Any]) -> None:
        assert self.process.stdin is not None
        self.process.stdin.write(pack(command))
        self.process.stdin.flush()

    def next_event(self) -> tuple[dict[str, Any], bytes | None]:
        assert self.process.stdout is not None
        while True:
            line = self.process.stdout.readline()
            if not line:
                raise EOFError(f"worker ended: {self.stderr()}")
            message = json.loads(line)
            payload = self.process.stdout.read(message["nbytes"]) if message.get("nbytes") else None
            if message["ev"] != "heartbeat":
                self.events.append(message)
                return message, payload

    def until(self, *kinds: str, timeout: float = 240.0) -> list[tuple[dict[str, Any], bytes | None]]:
        """Every event up to and including the first of `kinds`."""
        deadline = time.monotonic() + timeout
        seen = []
        while time.monotonic() < deadline:
            message, payload = self.next_event()
            seen.append((message, payload))
            if message["ev"] in kinds:
                return seen
        raise TimeoutError(f"no {kinds} in {timeout} s")

    def stderr(self) -> str:
        self.process.kill()
        assert self.process.stderr is not None
        return self.process.stderr.read().decode(errors="replace")[-3000:]

    def close(self) -> None:
        if self.process.poll() is None:
            try:
                self.send({"op": "shutdown"})
                self.process.wait(timeout=20)
            except (OSError, subprocess.TimeoutExpired):
                self.process.kill()
                self.process.wait()
        for stream in (self.process.stdin, self.process.stdout, self.process.stderr):
            if stream is not None:
                with contextlib.suppress(BrokenPipeError):  # a killed worker leaves unsent commands behind
                    stream.close()


def batch(model: dict[str, Any] | None, prompts: list[str], steps: int = 2, size: int = 64,
          guidance: float = 3.0, **extra: Any) -> dict[str, Any]:
    items = [{"job_id": f"j{i}", "index": 0, "prompt": prompt, "seed": 7 + i} for i, prompt in enumerate(prompts)]
    command: dict[str, Any] = {"op": "run", "batch_id": f"b-{time.monotonic_ns()}", "width": size, "height": size,
                               "steps": steps, "guidance": guidance, "items": items, **extra}
    if model is not None:
        command["model"] = model
    return command


def model_fields(name: str, path: str = "", family: str = "auto", config_dir: str = "") -> dict[str, Any]:
    return {"name": name, "path": path, "family": family, "config_dir": config_dir, "dtype": "auto",
            "scheduler": "euler"}
