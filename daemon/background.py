"""The daemon's background tasks, watched in one place.

A part that runs a loop of its own (the audit committer, the job store's committer, the monitor)
hands its task to `BackgroundTasks.watch`; tasks the daemon itself runs (the dispatcher, one-shot
catch-up work) are started with `start`. A task that ends while the daemon runs (an exception, a
cancellation nobody asked for, or a loop that returned) is logged with its traceback, kept for
`daemon.status`, and reported once to the `on_failure` callback given at construction. After
`stopping()`, tasks ending are the shutdown at work and are not failures.

`shutdown_step` runs one step of the daemon's shutdown so that a step that fails or hangs is
logged and the next ones still run: the state lock is released and the process exits.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass
from typing import Any

log = logging.getLogger("sai.daemon")


@dataclass(frozen=True)
class TaskFailure:
    name: str
    """What the task is, as an operator reads it: "audit committer"."""
    duty: str
    """What stops while it is gone: "audited actions (submit, cancel, pause) and job finishes"."""
    essential: bool
    """True when the daemon cannot keep its promises without it: it exits for a restart."""
    error: str
    at: float

    def message(self) -> str:
        then = "the daemon stops (non-zero exit) so that it is restarted" if self.essential \
            else "the daemon goes on without it; restart the daemon to get it back"
        return f"{self.name} died: {self.error}; {self.duty} stopped; {then}"

    def view(self) -> dict[str, Any]:
        return {"name": self.name, "duty": self.duty, "essential": self.essential, "error": self.error,
                "at": self.at, "message": self.message()}


@dataclass(frozen=True)
class _Watched:
    name: str
    duty: str
    essential: bool
    lasts: bool


class BackgroundTasks:
    def __init__(self, on_failure: Callable[[TaskFailure], None]) -> None:
        self._on_failure = on_failure
        self._started: set[asyncio.Task[Any]] = set()
        self._stopping = False
        self.failures: list[TaskFailure] = []

    def watch(self, task: asyncio.Task[Any], name: str, duty: str, *, essential: bool,
              lasts: bool = True) -> asyncio.Task[Any]:
        """Report `task` if it ends before `stopping()`. `lasts=False`: a one-shot task, for which
        returning is success and only an exception is a failure."""
        watched = _Watched(name, duty, essential, lasts)
        task.add_done_callback(lambda done: self._ended(done, watched))
        return task

    def start(self, work: Coroutine[Any, Any, Any], name: str, duty: str, *, essential: bool,
              lasts: bool = True) -> asyncio.Task[Any]:
        """Run `work` as a watched task; `cancel_started()` ends it at shutdown."""
        task = asyncio.create_task(work, name=f"sai-{name.replace(' ', '-')}")
        self._started.add(task)
        task.add_done_callback(self._started.discard)
        return self.watch(task, name, duty, essential=essential, lasts=lasts)

    def stopping(self) -> None:
        """The daemon is shutting down: tasks that end from now on are not failures."""
        self._stopping = True

    async def cancel_started(self) -> None:
        tasks = list(self._started)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    @property
    def fatal(self) -> TaskFailure | None:
        """The first essential task that died, if any."""
        return next((f for f in self.failures if f.essential), None)

    def _ended(self, task: asyncio.Task[Any], watched: _Watched) -> None:
        if task.cancelled():
            error, exc = "cancelled while the daemon was running", None
        else:
            exc = task.exception()  # retrieved here, so asyncio never reports it as unretrieved
            if exc is None and not watched.lasts:
                return
            error = f"{type(exc).__name__}: {exc}" if exc is not None else "returned while the daemon was running"
        if self._stopping:
            if exc is not None:
                log.error("%s failed while the daemon stopped: %s", watched.name, error,
                          exc_info=(type(exc), exc, exc.__traceback__))
            return
        failure = TaskFailure(watched.name, watched.duty, watched.essential, error, time.time())
        self.failures.append(failure)
        log.critical("%s", failure.message(),
                     exc_info=(type(exc), exc, exc.__traceback__) if exc is not None else None)
        self._on_failure(failure)


async def shutdown_step(what: str, action: Callable[[], Awaitable[Any]], timeout: float) -> bool:
    """Run one shutdown step within `timeout` seconds. True when it completed; a step that failed
    or hung is logged (with its traceback) and False is returned so the caller goes on."""
    try:
        await asyncio.wait_for(action(), timeout)
        return True
    except TimeoutError:
        log.error("shutdown: %s did not finish within %.0f s; going on without it", what, timeout)
    except Exception:
        log.exception("shutdown: %s failed; going on", what)
    return False
