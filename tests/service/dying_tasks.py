"""Test double: the real `sai daemon`, with one background task made to die.

`python dying_tasks.py TASK daemon ARGS...` runs `sai daemon ARGS...` (on uvloop, as installed)
after wrapping the loop of TASK (a key of LOOPS) so that SIGUSR1 makes its task end with
InjectedFault, as a task that hit a bug would; a task of ONE_SHOTS raises InjectedFault the first
time it runs. Everything else is the daemon's own code: this is how the tests kill a background
task for which no outside fault reaches the loop.
"""

from __future__ import annotations

import asyncio
import signal
import sys
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from console.cli import main
from daemon.audit.log import AuditLog
from daemon.dispatch import Box, Lane
from daemon.monitor.service import Monitor
from daemon.queue.store import JobStore
from daemon.worker.supervisor import WorkerSupervisor

LOOPS: dict[str, tuple[type, str]] = {
    "audit committer": (AuditLog, "_commit_loop"),
    "job store committer": (JobStore, "_write_loop"),
    "monitor": (Monitor, "_run"),
    "dispatcher": (Box, "run"),
    "worker reader": (WorkerSupervisor, "_read_loop"),
}

ONE_SHOTS: dict[str, tuple[type, str]] = {
    "batch runner": (Lane, "_run_batch"),
}

LoopMethod = Callable[..., Coroutine[Any, Any, Any]]


class InjectedFault(RuntimeError):
    """Raised by this test double, never by the daemon."""


def dying_on_sigusr1(name: str, loop_method: LoopMethod) -> LoopMethod:
    async def run(self: Any, *args: Any) -> Any:
        body = asyncio.ensure_future(loop_method(self, *args))
        signalled = asyncio.Event()
        asyncio.get_running_loop().add_signal_handler(signal.SIGUSR1, signalled.set)
        fault = asyncio.ensure_future(signalled.wait())
        try:
            await asyncio.wait({body, fault}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            fault.cancel()
            if not body.done():
                body.cancel()
        if signalled.is_set():
            raise InjectedFault(f"{name} killed on purpose by the test double (SIGUSR1)")
        return body.result()

    return run


def dying_once(name: str, method: LoopMethod) -> LoopMethod:
    died = False

    async def run(self: Any, *args: Any) -> Any:
        nonlocal died
        if not died:
            died = True
            raise InjectedFault(f"{name} killed on purpose by the test double (first run)")
        return await method(self, *args)

    return run


if __name__ == "__main__":
    task = sys.argv[1]
    if task in ONE_SHOTS:
        owner, method = ONE_SHOTS[task]
        setattr(owner, method, dying_once(task, getattr(owner, method)))
    else:
        owner, method = LOOPS[task]
        setattr(owner, method, dying_on_sigusr1(task, getattr(owner, method)))
    sys.exit(main(sys.argv[2:]))
