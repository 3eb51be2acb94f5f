"""A fake worker supervisor for in-process tests of the queue and the dispatcher (the real worker
process is tested through the real daemon everywhere else). It holds each batch until the test lets
it run, so a test decides exactly when a batch starts, steps, finishes or crashes."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from daemon.worker.supervisor import BatchResult, WorkerCrashed


@dataclass
class FakeBatch:
    command: dict[str, Any]
    on_progress: Callable[[int, int], None]
    go: asyncio.Event = field(default_factory=asyncio.Event)
    crash: str | None = None
    began: asyncio.Event = field(default_factory=asyncio.Event)
    done: bool = False

    @property
    def job_ids(self) -> list[str]:
        return list(dict.fromkeys(item["job_id"] for item in self.command["items"]))


class FakeWorkerSupervisor:
    """What a dispatch Lane uses of daemon.worker.supervisor.WorkerSupervisor, and nothing else. Batches
    run one at a time in the order handed over, as in the real worker."""

    def __init__(self, name: str = "cpu0") -> None:
        self.name = name
        self.device = "cpu"
        self.batches: list[FakeBatch] = []
        self.info: dict[str, Any] = {"model_id": "tiny", "memory": {}}
        self.state = "stopped"
        self.cancelled: set[str] = set()
        self.unloaded: list[str] = []
        self.generation = 0
        self._alive = False
        self._turn = asyncio.Lock()

    @property
    def alive(self) -> bool:
        return self._alive

    def capacity(self) -> int | None:
        return None

    def status(self) -> dict[str, Any]:
        return {"name": self.name, "state": self.state, "pid": None, "restarts": 0, "last_error": None, "model_id": "tiny",
                "device": "cpu", "dtype": "float32", "weights_sha256": None, "memory": {}}

    async def start(self, timeout: float = 600.0) -> dict[str, Any]:
        self._alive, self.state = True, "ready"
        self.generation += 1
        return self.info

    async def stop(self, timeout: float = 10.0) -> None:
        self._alive, self.state = False, "stopped"

    async def kill(self) -> None:
        for batch in self.batches:
            if not batch.go.is_set():
                batch.crash = "killed"
                batch.go.set()
        await self.stop()

    def unload(self, name: str) -> None:
        self.unloaded.append(name)

    def cancel(self, job_ids: list[str]) -> None:
        self.cancelled.update(job_ids)

    async def run_batch(self, command: dict[str, Any], on_progress: Callable[[int, int], None]) -> BatchResult:
        batch = FakeBatch(command, on_progress)
        self.batches.append(batch)
        async with self._turn:
            await batch.go.wait()
            batch.done = True
            if batch.crash:  # the process is gone: the batch waiting behind it goes down with it
                self._alive, self.state = False, "crashed"
                for other in self.batches:
                    if not other.done:
                        other.crash = other.crash or f"worker died before this batch began: {batch.crash}"
                        other.go.set()
                raise WorkerCrashed(batch.crash, started=batch.began.is_set(), generation=self.generation)
            live = [item for item in command["items"] if item["job_id"] not in self.cancelled]
            if live:
                batch.began.set()
                for step in range(1, command["steps"] + 1):
                    on_progress(step, command["steps"])
                    await asyncio.sleep(0)
            shape = (command["height"], command["width"], 3)
            images = {(item["job_id"], item["index"]): (shape, bytes(shape[0] * shape[1] * 3)) for item in live}
            return BatchResult(images=images, cancelled={item["job_id"] for item in command["items"]} - {
                item["job_id"] for item in live}, memory={}, peak={})
