"""A test model wrapper that wedges for real: a call whose prompt says "wedge" stops inside the
pipeline and never returns, while the worker's other threads (commands, heartbeats) run on, as
they do when a CUDA kernel hangs. Loaded through `worker.pipeline_wrapper`; never used outside tests."""

from __future__ import annotations

import threading
from typing import Any


class WedgingPipelineForTests:
    def __init__(self, pipe: Any) -> None:
        self._pipe = pipe

    def __getattr__(self, name: str) -> Any:
        return getattr(self._pipe, name)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        if any("wedge" in prompt for prompt in kwargs.get("prompt", [])):
            threading.Event().wait()
        return self._pipe(*args, **kwargs)
