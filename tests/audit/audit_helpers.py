"""Audit test helpers: real logs in temporary SQLite files, built with the real AuditLog, and a
socket server holding one for the real `sai audit` CLI."""

from __future__ import annotations

import asyncio
import shutil
import sqlite3
import tempfile
import threading
from collections.abc import Coroutine
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from console.cli import main
from daemon.audit.log import AuditLog

ORIGIN = "sai.test/audit"
ALICE = {"uid": 1000, "user": "alice", "pid": 4242}
BOB = {"uid": 1001, "user": "bob", "pid": 777}


def record(i: int) -> tuple[dict[str, Any], str, str, dict[str, Any]]:
    """A varied but deterministic entry i: (actor, action, subject, details)."""
    actions = ("job.submit", "job.start", "job.finish", "output.write", "job.cancel")
    actor = ALICE if i % 3 else BOB
    details = {"n": i, "prompt_sha256": f"{i:064x}", "ok": i % 2 == 0, "tags": ["a", "ü"], "ratio": i / 8}
    return actor, actions[i % len(actions)], f"job-{i:04d}", details


async def build(path: Path, key: Ed25519PrivateKey, count: int, every: int = 10, **kw: Any) -> AuditLog:
    """An open log with entry 0 plus `count` entries appended one commit at a time."""
    log = await AuditLog.open(path, key, ORIGIN, checkpoint_every_entries=every,
                              checkpoint_every_seconds=kw.pop("every_seconds", 3600.0), **kw)
    for i in range(count):
        await log.append(*record(i))
    return log


def writable(path: Path) -> sqlite3.Connection:
    """A plain connection for tampering (the expression indexes go first, as an attacker's would)."""
    conn = sqlite3.connect(str(path), isolation_level=None)
    indexes = conn.execute("SELECT name FROM sqlite_master WHERE type = 'index' AND name LIKE 'audit_entries_%'")
    for (name,) in indexes.fetchall():
        conn.execute(f"DROP INDEX {name}")
    return conn


class Served:
    """A socket server with the audit methods on a loop in a background thread."""

    def __init__(self, db: Path, key: Ed25519PrivateKey) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="sai-audit-", dir="/tmp"))
        self.socket = self.dir / "d.sock"
        self.loop = asyncio.new_event_loop()
        self._stop: asyncio.Event | None = None
        self._ready = threading.Event()
        self._error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, args=(db, key), daemon=True)
        self.thread.start()
        if not self._ready.wait(30) or self._error:
            raise RuntimeError(f"server did not start: {self._error!r}")

    def _run(self, db: Path, key: Ed25519PrivateKey) -> None:
        self.loop.run_until_complete(self._main(db, key))

    async def _main(self, db: Path, key: Ed25519PrivateKey) -> None:
        from daemon import api, config
        from daemon.api.limits import CallLimits
        from daemon.events import EventBus
        from daemon.queue.store import JobStore
        from daemon.server import SocketServer

        try:
            api.load_all()
            self.log = await build(db, key, 20)
            self.store = await JobStore.open(self.dir / "jobs.sqlite3")  # empty: audit.verify cross-checks it
            bus = EventBus()
            self.log.subscribe(lambda entry: bus.publish("audit", entry))
            auth = config.load(environ={}, system_file=None).auth
            limits = CallLimits.from_config(config.load(environ={}, system_file=None).daemon)
            daemon = SimpleNamespace(audit=self.log, store=self.store, call_limits=limits)
            server = SocketServer(self.socket, daemon, auth, bus)
            server.claim()
            await server.start()
            self._stop = asyncio.Event()
        except BaseException as exc:
            self._error = exc
            self._ready.set()
            raise
        self._ready.set()
        await self._stop.wait()
        await server.close()
        await self.store.close()
        await self.log.close()

    def call(self, coro: Coroutine[Any, Any, Any]) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(30)

    def stop(self) -> None:
        if self._stop is not None and self.thread.is_alive():
            self.loop.call_soon_threadsafe(self._stop.set)
        self.thread.join(30)
        shutil.rmtree(self.dir, ignore_errors=True)


def sai(served: Served, *args: str) -> int:
    return main(["--socket", str(served.socket), "audit", *args])
