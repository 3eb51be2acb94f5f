"""The CPU-heavy halves of verification, run in a pool of worker processes on big logs.

Ed25519 verification and SHA-256 over a million entries are both CPU-bound, and the signature
library holds the GIL, so threads would not help. Workers are started with "spawn" (the daemon
has threads; forking it is unsafe) and only import this package, which stays light.
"""

from __future__ import annotations

import collections
import hashlib
import itertools
import multiprocessing
import sqlite3
from concurrent.futures import Future, ProcessPoolExecutor
from typing import NamedTuple

from daemon.audit import merkle
from daemon.audit.entry import ROTATE_PREFIX
from daemon.crypto.ed25519 import verify
from daemon.hardening import exit_when_orphaned

SIGNATURE_BATCH = 4096


def make_pool(workers: int) -> ProcessPoolExecutor:
    return ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn"), initializer=exit_when_orphaned)


def verify_batch(start: int, public_raw: bytes, leaves: bytes, signatures: bytes) -> int | None:
    """The first position in the batch whose signature fails, or None."""
    for i in range(len(leaves) // 32):
        if not verify(public_raw, signatures[64 * i: 64 * i + 64], leaves[32 * i: 32 * i + 32]):
            return start + i
    return None


class Signatures:
    """Signature checks of the deep path, batched (one key, consecutive entries) into a pool."""

    def __init__(self, pool: ProcessPoolExecutor, workers: int) -> None:
        self.pool, self.limit, self.batch_size = pool, 2 * workers, SIGNATURE_BATCH
        self.futures: collections.deque[Future[int | None]] = collections.deque()
        self.batch: tuple[int, bytes, list[bytes], list[bytes]] | None = None
        self.first_bad: int | None = None

    def add(self, pos: int, public_raw: bytes, leaf: bytes, signature: bytes) -> None:
        b = self.batch
        if b is None or b[1] != public_raw or b[0] + len(b[2]) != pos or len(b[2]) >= self.batch_size:
            self.flush()
            self.batch = b = (pos, public_raw, [], [])
        b[2].append(leaf)
        b[3].append(signature if len(signature) == 64 else bytes(64))  # a wrong length never verifies

    def flush(self) -> None:
        if self.batch:
            start, raw, leaves, sigs = self.batch
            self.futures.append(self.pool.submit(verify_batch, start, raw, b"".join(leaves), b"".join(sigs)))
            while len(self.futures) > self.limit:  # bounded memory: wait for the oldest
                self._collect(self.futures.popleft())
        self.batch = None

    def _collect(self, fut: Future[int | None]) -> None:
        bad = fut.result()
        if bad is not None and (self.first_bad is None or bad < self.first_bad):
            self.first_bad = bad

    def finish(self) -> int | None:
        """Wait for every queued check; the lowest failing position, if any."""
        self.flush()
        while self.futures:
            self._collect(self.futures.popleft())
        return self.first_bad


class ChunkScan(NamedTuple):
    found: int
    """Rows found in the range (fewer than asked: a gap)."""
    mismatch: int | None
    """Offset of the first entry whose bytes do not hash to its stored leaf hash."""
    rotations: list[int]
    """Offsets of entries that look like key rotations (checked in full by the caller)."""
    subtrees: dict[int, list[bytes]]
    """Per asked offset k: the subtree hashes covering the chunk's first k leaves."""
    root: bytes | None
    """Root of the chunk when it is complete (2**level leaves)."""


def scan_chunk(path: str, c0: int, c1: int, level: int, offsets: list[int]) -> ChunkScan:
    """Hash entries [c0, c1) of the database at `path` (its own read-only connection) and build
    their part of the tree: the fast path's work for one chunk."""
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    conn.text_factory = bytes
    try:
        rows = conn.execute("SELECT entry, leaf_hash FROM audit_entries WHERE seq >= ? AND seq < ? ORDER BY seq",
                            (c0, c1)).fetchall()
    finally:
        conn.close()
    datas, stored = [r[0] for r in rows], [r[1] for r in rows]
    sha = hashlib.sha256
    leaves = [sha(b"\x00" + d).digest() for d in datas]
    mismatch = None
    if leaves != stored:
        mismatch = next(i for i, (a, b) in enumerate(zip(leaves, stored)) if a != b)
    rotations: list[int] = []
    if any(map(bytes.startswith, datas, itertools.repeat(ROTATE_PREFIX))):
        rotations = [i for i, d in enumerate(datas) if d.startswith(ROTATE_PREFIX)]
    if len(rows) != c1 - c0 or mismatch is not None:
        return ChunkScan(len(rows), mismatch, rotations, {}, None)
    levels = merkle.levels(leaves)
    subtrees = {k: merkle.chunk_subtrees(levels, k) for k in offsets}
    root = levels[-1][0] if len(leaves) == 1 << level else None
    return ChunkScan(len(rows), None, rotations, subtrees, root)
