"""Small helpers for the attack tests: a daemon other users can reach, a client they run, timing."""

from __future__ import annotations

import asyncio
import json
import statistics
import threading
import time
from collections.abc import Callable
from typing import Any

import psutil

from daemon.client import DaemonClient
from tests.harness import DaemonProcess, merged
from tests.security.conftest import LocalUser, open_path_to_others, shared_config

CLIENT = r'''
import json, socket, sys
def rpc(path, method, **params):
    """One call on a fresh connection, as this user: the reply object (result or error)."""
    s = socket.socket(socket.AF_UNIX)
    s.connect(path)
    s.sendall((json.dumps({"jsonrpc": "2.0", "id": 1, "method": method, "params": params}) + "\n").encode())
    data = b""
    while not data.endswith(b"\n"):
        chunk = s.recv(1 << 20)
        if not chunk:
            break
        data += chunk
    s.close()
    return json.loads(data)
'''
"""Source of `rpc(path, method, **params)` for code run as another user (no project imports)."""


def shared_daemon(make_daemon: Callable[..., DaemonProcess], users: dict[str, LocalUser],
                  config: dict[str, dict[str, Any]] | None = None) -> DaemonProcess:
    """A daemon whose socket the test users' group can reach, with the operator named."""
    daemon = make_daemon(config=merged(shared_config(users), config or {}))
    open_path_to_others(daemon.socket.parent)
    return daemon


def run_as(user: LocalUser, code: str, *args: str, timeout: float = 120.0) -> Any:
    """Run `CLIENT + code` as `user`; the JSON its last output line prints."""
    done = user.python(CLIENT + code, *args, timeout=timeout)
    assert done.returncode == 0, f"attack script failed as {user.name}:\n{done.stderr[-3000:]}"
    return json.loads(done.stdout.strip().splitlines()[-1])


def in_background(fn: Callable[[], Any]) -> Callable[[], Any]:
    """Start `fn` in a thread; the returned function joins it and gives its result (or raises)."""
    box: dict[str, Any] = {}

    def target() -> None:
        try:
            box["value"] = fn()
        except BaseException as exc:  # handed to the joiner
            box["error"] = exc

    thread = threading.Thread(target=target, daemon=True)
    thread.start()

    def join(timeout: float = 300.0) -> Any:
        thread.join(timeout)
        if "error" in box:
            raise box["error"]
        return box.get("value")

    return join


async def status_p50(client: DaemonClient, calls: int = 15) -> float:
    """Median seconds of `daemon.status` on `client`."""
    times = []
    for _ in range(calls):
        started = time.perf_counter()
        await client.call("daemon.status")
        times.append(time.perf_counter() - started)
        await asyncio.sleep(0.02)
    return statistics.median(times)


async def fill_audit(client: DaemonClient, entries: int) -> None:
    """At least `entries` audit entries: the queue paused, then that many submits (one entry each)."""
    await client.call("queue.pause")
    for start in range(0, entries, 200):
        await asyncio.gather(*(client.call("job.submit", prompt=f"filler {i}")
                               for i in range(start, min(entries, start + 200))))


def unix_sockets(pid: int) -> int:
    return len(psutil.Process(pid).net_connections("unix"))


async def settled_sockets(pid: int) -> int:
    """The daemon's Unix sockets once probes (the harness's readiness check) have gone."""
    counts = []
    for _ in range(5):
        counts.append(unix_sockets(pid))
        await asyncio.sleep(0.1)
    return min(counts)


async def until_held(pid: int, count: int, timeout: float = 60.0) -> None:
    """Wait until the daemon holds `count` Unix sockets (an attacker's connections are open)."""
    deadline = time.monotonic() + timeout
    while unix_sockets(pid) < count:
        assert time.monotonic() < deadline, f"the daemon holds {unix_sockets(pid)} sockets, not {count}"
        await asyncio.sleep(0.1)
