"""A test model wrapper that leaks for real: it keeps memory alive after every call, inside a
real worker process, so leak detection can be tested end to end. Loaded by the worker through
the `worker.pipeline_wrapper` setting; never used outside tests."""

from __future__ import annotations

from typing import Any

LEAK_PER_CALL = 48 * 2**20


class LeakingPipelineForTests:
    def __init__(self, pipe: Any) -> None:
        self._pipe = pipe
        self._kept: list[bytearray] = []

    def __getattr__(self, name: str) -> Any:
        return getattr(self._pipe, name)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        result = self._pipe(*args, **kwargs)
        block = bytearray(LEAK_PER_CALL)
        block[::4096] = b"\x01" * len(block[::4096])  # touch every page so it counts in RSS
        self._kept.append(block)
        return result
