"""Audit test helpers: real logs in temporary SQLite files, built with the real AuditLog."""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

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
