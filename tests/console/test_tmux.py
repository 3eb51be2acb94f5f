"""`sai` in a real terminal (tmux): no daemon answers, so it embeds one; a job typed from the keyboard
runs, and its success is read off the screen with capture-pane."""

from __future__ import annotations

import asyncio
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from daemon.client import DaemonClient

ROOT = Path(__file__).resolve().parents[2]
CONFIG = '[defaults]\nwidth = 64\nheight = 64\nsteps = 4\n[model]\nthreads = 1\n'

pytestmark = pytest.mark.skipif(shutil.which("tmux") is None, reason="tmux is not installed")


class Terminal:
    def __init__(self, server: str, session: str) -> None:
        self.server, self.session = server, session

    def tmux(self, *args: str) -> str:
        return subprocess.run(["tmux", "-L", self.server, *args], capture_output=True, text=True).stdout

    def screen(self) -> str:
        return self.tmux("capture-pane", "-p", "-t", self.session)

    def keys(self, *keys: str, literal: bool = False) -> None:
        self.tmux("send-keys", "-t", self.session, *(["-l"] if literal else []), *keys)

    def alive(self) -> bool:
        return subprocess.run(["tmux", "-L", self.server, "has-session", "-t", self.session],
                              capture_output=True).returncode == 0

    def wait(self, predicate: Callable[[str], bool], timeout: float, what: str) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            screen = self.screen()
            if predicate(screen):
                return screen
            time.sleep(0.2)
        raise AssertionError(f"timed out waiting for {what}; the screen shows:\n{self.screen()}")


@pytest.fixture
def terminal(tiny_model: Path) -> Iterator[tuple[Terminal, Path]]:
    root = Path(tempfile.mkdtemp(prefix="sai-", dir="/tmp"))
    state = root / "state"
    (state / "models").mkdir(parents=True)
    (state / "models" / "tiny").symlink_to(tiny_model)
    (root / "config.toml").write_text(CONFIG)
    server, session = f"sai-test-{os.getpid()}", "console"
    command = (f"{sys.executable} -m console.cli --socket {root}/d.sock --state-dir {state} "
               f"--config {root}/config.toml")
    env = {**os.environ, "XDG_CONFIG_HOME": str(root), "TERM": "xterm-256color"}
    env.pop("SAI_SOCKET", None)
    subprocess.run(["tmux", "-L", server, "-f", "/dev/null", "new-session", "-d", "-s", session, "-x", "100", "-y",
                    "30", command], check=True, cwd=ROOT, env=env)
    try:
        yield Terminal(server, session), state
    finally:
        subprocess.run(["tmux", "-L", server, "kill-server"], capture_output=True)
        shutil.rmtree(root, ignore_errors=True)


def test_sai_embeds_a_daemon_and_runs_a_job_typed_at_the_keyboard(terminal: tuple[Terminal, Path]) -> None:
    term, state = terminal
    term.wait(lambda s: "EMBEDDED daemon" in s, 60, "the console with an embedded daemon")
    term.wait(lambda s: "worker ready" in s, 120, "the worker to load the model")
    term.keys("n")
    term.wait(lambda s: "New job" in s, 10, "the new-job form")
    term.keys("a lighthouse typed in tmux", literal=True)
    term.keys("Enter")
    screen = term.wait(lambda s: "succeeded" in s and "a lighthouse typed" in s, 120, "the job to succeed")
    assert "✓ succeeded" in screen
    assert "Traceback" not in screen
    term.keys("q")
    deadline = time.monotonic() + 60
    while term.alive() and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not term.alive(), "sai did not exit after q with nothing queued"
    log = (state / "embedded-daemon.log").read_text()
    assert "daemon stopped" in log


async def queue_jobs(socket_path: Path, count: int) -> tuple[str, str]:
    """Queue `count` jobs; the first and the last in queue order are submitted alone, so their ids are known."""
    client = await DaemonClient.connect(socket_path)
    try:
        first = (await client.call("job.submit", prompt="first of many"))["job_id"]
        for start in range(1, count - 1, 50):
            await asyncio.gather(*(client.call("job.submit", prompt=f"one of many {n}")
                                   for n in range(start, min(count - 1, start + 50))))
        last = (await client.call("job.submit", prompt="last of many"))["job_id"]
        return first, last
    finally:
        await client.close()


def test_queue_pane_at_80x24_shows_the_row_the_cursor_moves_to(make_daemon: Any) -> None:
    count = 300
    daemon = make_daemon({"queue": {"start_paused": True, "burst": count, "rate_per_minute": 60_000.0},
                          "model": {"preload": False}})
    first, last = asyncio.run(queue_jobs(daemon.socket, count))
    server, session = f"sai-scroll-{os.getpid()}", "console"
    env = {**os.environ, "XDG_CONFIG_HOME": str(daemon.socket.parent), "TERM": "xterm-256color"}
    env.pop("SAI_SOCKET", None)
    subprocess.run(["tmux", "-L", server, "-f", "/dev/null", "new-session", "-d", "-s", session, "-x", "80", "-y", "24",
                    f"{sys.executable} -m console.cli --socket {daemon.socket}"], check=True, cwd=ROOT, env=env)
    term = Terminal(server, session)
    try:
        screen = term.wait(lambda s: f"1/{count}" in s and first in s, 60, f"the queue with {count} jobs")
        assert last not in screen
        term.keys("G")
        screen = term.wait(lambda s: f"{count}/{count}" in s, 10, "the cursor on the last row")
        assert last in screen and first not in screen, screen
        term.keys("g")
        screen = term.wait(lambda s: f"1/{count}" in s, 10, "the cursor on the first row")
        assert first in screen and last not in screen, screen
        term.keys("PageDown")
        term.keys("PageDown")
        term.keys("j")
        screen = term.wait(lambda s: re.search(rf"row (\d+)/{count}", s) is not None
                           and int(re.search(rf"row (\d+)/{count}", s).group(1)) > 20, 10, "two pages down")
        assert first not in screen, screen
    finally:
        subprocess.run(["tmux", "-L", server, "kill-server"], capture_output=True)
