"""The output path's pixel stage in other processes, off the generator's cores and the daemon's GIL.

`protect_image` has two stages: the pixel stage (visible and invisible marks: pure functions of
the image, the job's public fields and the settings) and the keyed stage (PNG with metadata, C2PA,
hash, encryption, signature, writes), which needs the keys and so stays in the daemon. A
`MarkPool` runs the pixel stage in a small pool of processes: only the pixels, the settings and
the fields a mark draws go there (the prompt is left out, and no key ever leaves the daemon).
Its processes run at a lower priority (`NICENESS`), so on a busy box the generator keeps its cores.

Size: `[outputs] pixel_processes` (-1: the cores the workers leave free, see `auto_size`; 0: the
marks run in the daemon's own threads, as before). On a 2-core box a CPU worker with torch's
default threads uses every core, so "auto" gives 0 there (docs/benchmarks.md has the measurements).

A pool process does not outlive the daemon, even one killed without closing the pool
(daemon.hardening.exit_when_orphaned).

A pool process that dies (killed, out of memory) breaks the pool: the images in flight are marked
again in a fresh pool, once; a second death fails the output with an error that says so.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import threading
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import replace
from datetime import datetime

import numpy as np

from daemon.crypto import OutputError
from daemon.hardening import exit_when_orphaned
from daemon.outputs.pipeline import Marked, OutputInfo, OutputSettings, mark_image

log = logging.getLogger("sai.outputs")

NICENESS = 10
"""Added to the pool processes' nice value: the generator keeps its cores when both want them."""
START_SECONDS = 120.0
"""How long start-up waits for a pool process to answer (an interpreter import on a loaded box)."""
MOST_AUTO = 8
"""The most processes "auto" starts, however many cores are free."""


def auto_size(cores: int, worker_threads: Sequence[tuple[str, int]]) -> int:
    """Cores the workers leave free: a CPU worker uses its torch threads (0: torch's default, every
    core), a GPU worker about one core feeding its device."""
    busy = sum(1 if device != "cpu" else (threads or cores) for device, threads in worker_threads)
    return max(0, min(MOST_AUTO, cores - busy))


def pool_size(setting: int, cores: int, worker_threads: Sequence[tuple[str, int]]) -> int:
    return auto_size(cores, worker_threads) if setting < 0 else setting


def open_pool(processes: int) -> MarkPool | None:
    """A started pool of `processes`, or None (the marks run in the daemon's threads): with none
    asked for, or when no process can be started here (the service user cannot run the interpreter,
    a process limit, no /dev/shm), which is logged as a warning naming the reason."""
    if processes < 1:
        return None
    pool: MarkPool | None = None
    try:
        pool = MarkPool(processes)  # its queues' semaphores already need multiprocessing's tracker process
        pool.start()
    except (OSError, BrokenProcessPool, TimeoutError) as exc:
        if pool is not None:
            pool.abandon()
        log.warning("outputs: cannot start the %d pixel pool process(es) ([outputs] pixel_processes): %s; the "
                    "watermarks are drawn in the daemon's threads instead", processes,
                    exc if str(exc) else type(exc).__name__)
        return None
    log.info("outputs: the watermarks are drawn in %d pool process(es)", processes)
    return pool


def _answer() -> int:
    return os.getpid()


def _start_process() -> None:
    try:
        os.nice(NICENESS)
    except OSError:
        pass
    exit_when_orphaned()


def mark_in_process(rgb: np.ndarray, info: OutputInfo, settings: OutputSettings, created: datetime) -> Marked:
    """The pixel stage, in a pool process; returns the marked image, the visible spec, whether the
    invisible mark went in, the stage's timings and the process's id (for tests and logs)."""
    timings: dict[str, float] = {}
    image, spec, invisible = mark_image(rgb, info, settings, created, timings)
    return Marked(image, spec, invisible, timings, os.getpid())


class MarkPool:
    """A process pool for the pixel stage; `mark` blocks the calling (daemon) thread until done."""

    def __init__(self, processes: int) -> None:
        if processes < 1:
            raise ValueError("a MarkPool needs at least one process")
        self.processes = processes
        self._lock = threading.Lock()
        self._pool = self._new_pool()
        self.restarts = 0

    def _new_pool(self) -> ProcessPoolExecutor:
        # spawn, not fork: the daemon has threads (and keys in memory a fork would copy).
        return ProcessPoolExecutor(self.processes, mp_context=multiprocessing.get_context("spawn"),
                                   initializer=_start_process)

    def start(self) -> None:
        """Start every process now and wait for each to answer (a pool that cannot spawn fails here,
        at start-up, not at the first image)."""
        with self._lock:
            pool = self._pool
        futures = [pool.submit(_answer) for _ in range(self.processes)]
        for future in futures:
            future.result(timeout=START_SECONDS)

    def abandon(self) -> None:
        """Drop a pool that could not start, without waiting on processes that never came."""
        with self._lock:
            self._pool.shutdown(wait=False, cancel_futures=True)

    def pids(self) -> list[int]:
        with self._lock:
            return list(getattr(self._pool, "_processes", {}) or {})

    def mark(self, rgb: np.ndarray, info: OutputInfo, settings: OutputSettings, created: datetime) -> Marked:
        public = replace(info, prompt="", negative_prompt="", params={})
        for attempt in (1, 2):
            with self._lock:
                pool = self._pool
            try:
                return pool.submit(mark_in_process, rgb, public, settings, created).result()
            except BrokenProcessPool:
                self._replace(pool)
                if attempt == 2:
                    raise OutputError(f"the output pool's process died twice marking image {info.index} of "
                                      f"{info.job_id}; nothing was written for it", field="image") from None
                log.warning("an output pool process died while marking image %d of %s; marking it again in a "
                            "fresh pool", info.index, info.job_id)
        raise AssertionError("unreachable")

    def _replace(self, broken: ProcessPoolExecutor) -> None:
        """A fresh pool in place of `broken` (once, however many threads saw it break)."""
        with self._lock:
            if self._pool is broken:
                self.restarts += 1
                self._pool = self._new_pool()
        broken.shutdown(wait=False, cancel_futures=True)

    def close(self) -> None:
        with self._lock:
            self._pool.shutdown(wait=True, cancel_futures=True)
