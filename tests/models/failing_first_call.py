"""A test double for a warm-up that fails (out of memory at the default size on a full GPU, which
a CPU cannot be made to do at load): the wrapped pipeline raises MemoryError on its first call
only. Loaded through `worker.pipeline_wrapper`; never used outside tests."""

from __future__ import annotations

from typing import Any


class FailsFirstCallForTests:
    def __init__(self, pipe: Any) -> None:
        self._pipe = pipe
        self._calls = 0

    def __getattr__(self, name: str) -> Any:
        return getattr(self._pipe, name)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        self._calls += 1
        if self._calls == 1:
            raise MemoryError("test double: no memory for the first call")
        return self._pipe(*args, **kwargs)
