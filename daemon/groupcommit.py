"""Helpers shared by the two group committers (the job store and the audit log)."""

from __future__ import annotations

import asyncio
import logging
import sqlite3
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

T = TypeVar("T")
log = logging.getLogger(__name__)

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


async def retry_while_locked(attempt: Callable[[], Awaitable[T]], what: str, path: str, waiting: str,
                             on_stall: Callable[[str | None], Any],
                             undo: Callable[[], Awaitable[Any]] | None = None,
                             give_up: Callable[[], bool] = lambda: False) -> T:
    """`attempt()` (one group commit) until it no longer finds the database locked by another
    process: the writes and whoever waits on them wait, nothing is dropped. `undo()` rolls a failed
    attempt back first; `give_up()` true (a committer that is closing) lets the error through.
    The first lock is logged and told to `on_stall(message)`; success after it, `on_stall(None)`."""
    stalled_since: float | None = None
    while True:
        try:
            result = await attempt()
            break
        except sqlite3.OperationalError as exc:
            if not is_locked(exc) or give_up():
                raise
            if undo is not None:
                await undo()
            if stalled_since is None:
                stalled_since = time.monotonic()
                message = f"{what} {path} is locked by another process or connection; {waiting} until it is released"
                log.error("%s", message)
                on_stall(message)
            await asyncio.sleep(LOCKED_RETRY_SECONDS)
    if stalled_since is not None:
        log.warning("%s is writable again after %.1f s", what, time.monotonic() - stalled_since)
        on_stall(None)
    return result
