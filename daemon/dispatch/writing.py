"""The output path's side of dispatch: a finished batch's images become stored outputs.

Shared by every worker's lane: a batch's images go through the output sink in the thread pool
(overlapping the next generation), each output is audited, and the batch's jobs finish together.
A full outputs filesystem puts the jobs back and pauses the queue until an operator makes room.
"""

from __future__ import annotations

import asyncio
import errno
import logging
from collections.abc import Callable
from concurrent.futures import Executor
from typing import Any, NamedTuple, Protocol

from daemon.queue.jobs import FAILED, SUCCEEDED, Job
from daemon.queue.manager import Auditor, QueueManager
from daemon.worker.supervisor import BatchResult

log = logging.getLogger("sai.dispatch")

NO_SPACE = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)
"""Write errors that mean the outputs filesystem (or a file-size limit) is full, not that the job is bad."""


class OutputSink(Protocol):
    def write(self, job: Job, index: int, shape: tuple[int, ...], pixels: bytes) -> dict[str, Any]:
        """Turn one generated image into stored output files (runs in a worker thread)."""

    def discard(self, job_id: str, count: int) -> None:
        """Remove what was written of a job's images when its outputs could not all be written."""


class BatchWritten(NamedTuple):
    """What became of a batch's outputs in the pool."""

    written: list[tuple[Job, list[dict[str, Any]]]]
    """Each job whose images were all written, with their records."""
    failed: list[tuple[Job, Exception]]
    """Each job whose outputs could not be written, and why (what was written of it is removed)."""
    unwritten: tuple[list[Job], OSError] | None
    """The outputs filesystem filled up: the jobs from there on, not written, and the error."""


class OutputWriter:
    def __init__(self, manager: QueueManager, sink: OutputSink, executor: Executor, *, audit: Auditor,
                 outputs_blocked: Callable[[str | None], None]) -> None:
        """`audit` records each output written; `outputs_blocked(message)` when outputs cannot be
        written for lack of space, `(None)` once they can again."""
        self.manager = manager
        self.sink = sink
        self.executor = executor
        self._audit = audit
        self._outputs_blocked_hook = outputs_blocked
        self._outputs_blocked = False

    async def write(self, jobs: list[Job], result: BatchResult) -> None:
        """Write the batch's outputs in one hand-off to the thread pool, then audit them and finish
        the jobs that have all theirs together: a batch costs two group commits, not two per image."""
        written, failed, unwritten = await asyncio.get_running_loop().run_in_executor(
            self.executor, self._write_all, jobs, result)
        for job, outputs in written:
            job.outputs = outputs
        await asyncio.gather(*(self._audit(None, "output.write", job.job_id, {
            k: record[k] for k in ("index", "png_sha256", "sai_sha256", "fingerprint", "kid", "signing_kid")
            if k in record}) for job, outputs in written for record in outputs))
        if written:
            await self.manager.finish([job for job, _ in written], SUCCEEDED)
        for job, exc in failed:
            log.error("writing outputs of %s failed", job.job_id, exc_info=exc)
            await self.manager.finish([job], FAILED, f"writing outputs failed: {exc}")
        if unwritten is not None:
            await self._no_space(*unwritten)
        elif written and self._outputs_blocked:
            self._outputs_blocked = False
            self._outputs_blocked_hook(None)

    def _write_all(self, jobs: list[Job], result: BatchResult) -> BatchWritten:
        """In the pool: each job's images, in order. A job whose outputs cannot all be written loses
        what was written of them; a full filesystem stops the batch there (those jobs go back)."""
        written: list[tuple[Job, list[dict[str, Any]]]] = []
        failed: list[tuple[Job, Exception]] = []
        for position, job in enumerate(jobs):
            try:
                outputs = []
                for index in range(job.count):
                    if (job.job_id, index) not in result.images:
                        raise RuntimeError(f"the worker returned no image {index}")
                    shape, pixels = result.images[(job.job_id, index)]
                    outputs.append(self.sink.write(job, index, shape, pixels))
            except Exception as exc:
                try:
                    self.sink.discard(job.job_id, job.count)
                except OSError as left:  # the job fails all the same; an operator removes what is left
                    log.error("job %s: could not remove what was written of its outputs: %s", job.job_id, left)
                if isinstance(exc, OSError) and exc.errno in NO_SPACE:
                    return BatchWritten(written, failed, (jobs[position:], exc))
                failed.append((job, exc))
                continue
            written.append((job, outputs))
        return BatchWritten(written, failed, None)

    async def _no_space(self, jobs: list[Job], exc: OSError) -> None:
        """The outputs filesystem is full: the jobs go back to the queue (no attempt charged; what
        was written of them is gone) and the queue pauses until an operator makes room and resumes."""
        where = getattr(self.sink, "outputs_dir", "the outputs directory")
        message = (f"cannot write outputs under {where}: {exc.strerror or exc}; {len(jobs)} job(s) put back in "
                   "the queue and the queue paused: free space there, then `sai resume`")
        log.error("%s", message)
        await self.manager.requeue(jobs, message, count_attempt=False)
        await self.manager.set_paused(None, True)
        self._outputs_blocked = True
        self._outputs_blocked_hook(message)
