"""Helpers shared by the two group committers (the job store and the audit log)."""

from __future__ import annotations

import asyncio
import sqlite3
from typing import Callable

LOCKED_RETRY_SECONDS = 0.5
"""How long a committer waits before it tries again a commit that found the database locked."""


def is_locked(exc: sqlite3.OperationalError) -> bool:
    """SQLITE_BUSY or SQLITE_LOCKED: another connection held the write lock past busy_timeout."""
    return getattr(exc, "sqlite_errorname", "") in ("SQLITE_BUSY", "SQLITE_LOCKED") or "locked" in str(exc)


async def let_others_join(pending: Callable[[], int], rounds: int = 4) -> None:
    """Yield to the event loop while each turn brings more writes, at most `rounds` turns.

    Requests already read from their sockets reach the committer within a loop turn or two; letting
    them join the group that is about to commit costs a few microseconds and saves a commit (a
    thread round trip and an fsync) each, which is where a burst of submits spends its time.
    """
    seen = pending()
    for _ in range(rounds):
        await asyncio.sleep(0)
        now = pending()
        if now == seen:
            return
        seen = now
