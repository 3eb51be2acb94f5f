"""A test double for a poisoned device: the worker named in POISONED (its SAI_WORKER_NAME, which
the daemon sets for each worker) kills its own process with SIGKILL at its first generation, as a
driver fault or a bad GPU would; every other worker generates normally. Loaded through
`worker.pipeline_wrapper`; never used outside tests."""

from __future__ import annotations

import os
import signal
from typing import Any

POISONED = "cpu1"


class CrashOnOneDeviceForTests:
    def __init__(self, pipe: Any) -> None:
        self._pipe = pipe

    def __getattr__(self, name: str) -> Any:
        return getattr(self._pipe, name)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        if os.environ.get("SAI_WORKER_NAME") == POISONED:
            os.kill(os.getpid(), signal.SIGKILL)
        return self._pipe(*args, **kwargs)
