"""A test model wrapper that makes a call slow for real: a prompt containing "slow" sleeps 3 s before
the pipeline runs, so a test can stop or kill a box while its batch is running. Loaded through
`worker.pipeline_wrapper`; never used outside tests."""

from __future__ import annotations

import time
from typing import Any

SECONDS = 3.0


class SlowPipelineForTests:
    def __init__(self, pipe: Any) -> None:
        self._pipe = pipe

    def __getattr__(self, name: str) -> Any:
        return getattr(self._pipe, name)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        if any("slow" in prompt for prompt in kwargs.get("prompt", [])):
            time.sleep(SECONDS)
        return self._pipe(*args, **kwargs)
