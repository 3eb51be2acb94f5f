"""Test doubles around the real pipeline, loaded through `worker.pipeline_wrapper`
("tests.pipeline_doubles:NAME"); never used outside tests. Each causes, for real and inside the
worker process, a fault a test cannot otherwise bring about on demand; every other call runs the
real pipeline unchanged."""

from __future__ import annotations

import os
import signal
import threading
import time
from typing import Any


class _PipelineDouble:
    def __init__(self, pipe: Any) -> None:
        self._pipe = pipe

    def __getattr__(self, name: str) -> Any:
        return getattr(self._pipe, name)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        self.before(list(kwargs.get("prompt", [])))
        result = self._pipe(*args, **kwargs)
        self.after()
        return result

    def before(self, prompts: list[str]) -> None:
        """Before the real call, with the call's prompts."""

    def after(self) -> None:
        """After the real call returned."""


class WedgingPipelineForTests(_PipelineDouble):
    """A call whose prompt says "wedge" stops inside the pipeline and never returns, while the
    worker's other threads (commands, heartbeats) run on, as they do when a CUDA kernel hangs."""

    def before(self, prompts: list[str]) -> None:
        if any("wedge" in prompt for prompt in prompts):
            threading.Event().wait()


class SlowPipelineForTests(_PipelineDouble):
    """A call whose prompt says "slow" sleeps SLOW_SECONDS first, so a test can stop or kill a box
    while its batch is running."""

    def before(self, prompts: list[str]) -> None:
        if any("slow" in prompt for prompt in prompts):
            time.sleep(SLOW_SECONDS)


class CrashOnOneDeviceForTests(_PipelineDouble):
    """The worker named POISONED (its SAI_WORKER_NAME, which the daemon sets for each worker)
    kills its own process with SIGKILL at its first generation, as a driver fault or a bad GPU
    would; every other worker generates normally."""

    def before(self, prompts: list[str]) -> None:
        if os.environ.get("SAI_WORKER_NAME") == POISONED:
            os.kill(os.getpid(), signal.SIGKILL)


class LeakingPipelineForTests(_PipelineDouble):
    """Keeps LEAK_PER_CALL bytes alive after every call, inside the real worker process, so leak
    detection is tested end to end."""

    def __init__(self, pipe: Any) -> None:
        super().__init__(pipe)
        self._kept: list[bytearray] = []

    def after(self) -> None:
        block = bytearray(LEAK_PER_CALL)
        block[::4096] = b"\x01" * len(block[::4096])  # touch every page so it counts in RSS
        self._kept.append(block)


SLOW_SECONDS = 3.0
POISONED = "cpu1"
LEAK_PER_CALL = 48 * 2**20
