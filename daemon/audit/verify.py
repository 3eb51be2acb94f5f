"""Verification of an audit log, live (the SQLite file) or exported (a directory).

Both run the same check over a `Source` of rows `(seq, entry bytes, leaf hash, signature)`:

- Always: entries are numbered 0, 1, 2, ... without gaps; each entry's bytes hash to its stored
  leaf hash; the Merkle tree rebuilt from the entries has, at each checkpoint's size, the root
  that checkpoint carries; each checkpoint is signed by a key of the log's key chain that was
  announced before that size. With a `Pin` (daemon.audit.chain), the chain must start at the
  pinned key and the log must extend the pinned checkpoint, if any. Entry 0 (`audit.init`) and every
  `audit.key_rotate` entry are checked in full, and so is every entry after the last checkpoint (no
  checkpoint covers them).
- Fast path: the entries a valid checkpoint covers are proven by that checkpoint's signature
  over the tree, so their own signatures are not checked. When something fails, the entries
  since the last good checkpoint are checked in full to name the first bad one.
- Deep path (`deep=True`): every entry is checked in full (canonical form, sequence number,
  key chain, Ed25519 signature, in a process pool for big logs), and so are the stored tree
  nodes the proofs are built from.

The result is `{"ok", "size", "first_bad", "reason"}`; `first_bad` is the lowest sequence number
found wrong (a bad checkpoint whose entries are all sound names its last entry, size - 1).
"""

from __future__ import annotations

import collections
import hashlib
import itertools
import os
import sqlite3
from collections.abc import Iterable, Iterator, Sequence
from concurrent.futures import Future, ProcessPoolExecutor
from pathlib import Path
from typing import Any, Protocol

from daemon.audit import checkpoint as cpmod
from daemon.audit import merkle, parallel
from daemon.audit.chain import KeyChain, Pin
from daemon.audit.entry import ROTATE_PREFIX, Row

CHUNK_LEVEL = 14
CHUNK = 1 << CHUNK_LEVEL
POOL_MIN_ENTRIES = 20_000
"""Deep checks of fewer entries than this run in the calling thread (a pool costs ~1 s to start)."""
PARALLEL_FAST_MIN = 200_000
"""The fast path hashes chunks in the pool from this many covered entries on."""

class Source(Protocol):
    origin: str
    size: int
    keys: dict[str, bytes]
    """key id -> raw Ed25519 public key, as the store records them."""
    checkpoints: list[tuple[int, str]]
    """(size the checkpoint is filed under, signed note)."""

    def rows(self, start: int, end: int) -> Iterator[Row]: ...

    def light_rows(self, start: int, end: int) -> Iterator[tuple[bytes, bytes]]:
        """(entry bytes, leaf hash) of entries [start, end), in order: the fast path's read."""

    def nodes(self, level: int, lo: int, hi: int) -> dict[int, bytes] | None:
        """Stored tree nodes of `level` with index in [lo, hi), or None if the source keeps none."""


def result(size: int, first_bad: int | None = None, reason: str | None = None) -> dict[str, Any]:
    return {"ok": first_bad is None and reason is None, "size": size, "first_bad": first_bad, "reason": reason}


class _Verifier:
    def __init__(self, src: Source, deep: bool, against: str | None, pin: Pin | None, workers: int | None,
                 also: Sequence[tuple[str, str]] = ()) -> None:
        self.src, self.deep = src, deep
        self.external = [(note, what) for note, what in (
            (against, "the checkpoint checked against"),
            (pin.checkpoint if pin else None, f"the checkpoint anchored in {pin.source if pin else ''}"),
            *also) if note is not None]
        """(signed note, what to call it): checkpoints from outside the log that it must extend."""
        self.size = src.size
        self.bad: tuple[int, str] | None = None
        self.chain = KeyChain(src.origin, src.keys, pin)
        self.proven = 0
        self.workers = (os.cpu_count() or 1) if workers is None else workers
        self.pool: ProcessPoolExecutor | None = None
        self.sigs: parallel.Signatures | None = None
        if self.workers > 1 and deep and self.size >= POOL_MIN_ENTRIES:
            self.pool = parallel.make_pool(self.workers)
            self.sigs = parallel.Signatures(self.pool, self.workers)

    def fail(self, seq: int, reason: str) -> None:
        if self.bad is None or seq < self.bad[0]:
            self.bad = (seq, reason)

    def run(self) -> dict[str, Any]:
        try:
            return self._run()
        finally:
            if self.pool is not None:
                self.pool.shutdown(cancel_futures=True)

    def _run(self) -> dict[str, Any]:
        by_size: dict[int, list[tuple[str, str | None]]] = collections.defaultdict(list)
        for label, note in self.src.checkpoints:
            by_size[label].append((note, None))
        for note, what in self.external:
            try:
                external = cpmod.parse(note).size
            except cpmod.CheckpointError as exc:
                return result(self.size, None, f"{what} is not valid: {exc}")
            by_size[external].append((note, what))
        stored = [s for s, notes in by_size.items() if any(what is None for _, what in notes) and s <= self.size]
        tail_from = max(stored, default=0)
        sizes = sorted(s for s in by_size if 0 < s <= self.size)
        if 0 in by_size:
            self._checkpoints(0, merkle.EMPTY_ROOT, by_size[0])
        frontier, next_cp = merkle.Frontier(), 0
        scans = self._start_scans(tail_from, sizes)
        for c0 in range(0, self.size, CHUNK):
            c1 = min(c0 + CHUNK, self.size)
            scan = self._take_scan(c0, c1, scans.pop(c0).result()) if c0 in scans else None
            if scan is not None:
                while self.bad is None and next_cp < len(sizes) and sizes[next_cp] <= c1:
                    s = sizes[next_cp]
                    next_cp += 1
                    self._checkpoints(s, merkle.fold(frontier.hashes() + scan.subtrees[s - c0]), by_size[s])
                if self.bad is not None:
                    break
                frontier.push_subtree(CHUNK_LEVEL, scan.root)  # type: ignore[arg-type]
                continue
            leaves = self._scan(c0, c1, tail_from)
            end = c0 + len(leaves)
            levels = merkle.levels(leaves)
            if self.deep and leaves:
                self._check_nodes(c0, levels)
            while self.bad is None and next_cp < len(sizes) and sizes[next_cp] <= end:
                s = sizes[next_cp]
                next_cp += 1
                self._checkpoints(s, merkle.fold(frontier.hashes() + merkle.chunk_subtrees(levels, s - c0)), by_size[s])
            if self.bad is not None:
                break
            if len(leaves) == CHUNK:
                for level, index, h in frontier.push_subtree(CHUNK_LEVEL, levels[-1][0]):
                    if self.deep:
                        self._check_node(level, index, h)
        if self.bad is not None:
            self._localize(self.proven, self.bad[0])
        bad_sig = self.sigs.finish() if self.sigs is not None else None
        if bad_sig is not None:
            self.fail(bad_sig, f"entry {bad_sig}: the signature does not verify")
        if self.bad is None:
            self._beyond_end(by_size)
        return result(self.size, *(self.bad if self.bad else (None, None)))

    def _start_scans(self, tail_from: int, sizes: list[int]) -> dict[int, Future[parallel.ChunkScan]]:
        """Fast path on a big database: hash the checkpointed chunks in the pool, ahead of use."""
        path = getattr(self.src, "path", None)
        if self.deep or path is None or self.workers < 2 or tail_from < PARALLEL_FAST_MIN:
            return {}
        self.pool = parallel.make_pool(self.workers)
        scans = {}
        for c0 in range(0, tail_from - CHUNK + 1, CHUNK):
            offsets = [s - c0 for s in sizes if c0 < s <= c0 + CHUNK]
            scans[c0] = self.pool.submit(parallel.scan_chunk, str(path), c0, c0 + CHUNK, CHUNK_LEVEL, offsets)
        return scans

    def _take_scan(self, c0: int, c1: int, scan: parallel.ChunkScan) -> parallel.ChunkScan | None:
        """A pool scan of [c0, c1) if it found nothing wrong (else None: the chunk is scanned
        here, which names the failure). Entry 0 and key rotations are checked in full here."""
        if scan.found != c1 - c0 or scan.mismatch is not None or scan.root is None:
            return None
        for i in sorted(set(scan.rotations) | ({0} if c0 == 0 else set())):
            _seq, data, leaf, sig = next(iter(self.src.rows(c0 + i, c0 + i + 1)))
            reason = self._check_entry(c0 + i, data, leaf, sig, apply=True)
            if reason:
                self.fail(c0 + i, reason)
                return None
        return scan

    def _scan(self, c0: int, c1: int, tail_from: int) -> list[bytes]:
        """Leaf hashes of entries [c0, c1), cut at the first bad entry (which is recorded).

        Entries that no checkpoint covers (from `tail_from` on), entry 0, key rotations, and on
        the deep path every entry, are checked in full; the rest only hashed, to be proven by
        the checkpoints over the tree.
        """
        full = self.deep or c1 > tail_from
        rows: list[Row] = []
        if full:
            rows = list(self.src.rows(c0, c1))
            datas, stored = [r[1] for r in rows], [r[2] for r in rows]
        else:
            light = list(self.src.light_rows(c0, c1))
            datas, stored = [r[0] for r in light], [r[1] for r in light]
        limit = len(datas)
        if limit != c1 - c0 or full:  # a short range means a gap: find it by sequence number
            if not full:
                rows, full = list(self.src.rows(c0, c1)), True
                datas, stored = [r[1] for r in rows], [r[2] for r in rows]
            limit = self._contiguous([r[0] for r in rows], c0, c1)
        sha = hashlib.sha256
        leaves = [sha(b"\x00" + d).digest() for d in datas[:limit]]
        if leaves != stored[:limit]:
            k = next(i for i, (a, b) in enumerate(zip(leaves, stored)) if a != b)
            errors = getattr(self.src, "row_errors", {})
            self.fail(c0 + k, errors.get(c0 + k) or
                      f"entry {c0 + k} does not match its leaf hash: it was changed after it was written")
            limit = k
        checks: Iterable[int]
        if self.deep:
            checks = range(limit)
        else:
            wanted = set(range(max(tail_from - c0, 0), limit))
            if c0 == 0 and limit:
                wanted.add(0)
            if any(map(bytes.startswith, datas[:limit], itertools.repeat(ROTATE_PREFIX))):
                wanted.update(i for i in range(limit) if datas[i].startswith(ROTATE_PREFIX))
            checks = sorted(wanted)
        for i in checks:
            sig = rows[i][3] if full else next(iter(self.src.rows(c0 + i, c0 + i + 1)))[3]
            reason = self._check_entry(c0 + i, datas[i], leaves[i], sig, apply=True)
            if reason:
                self.fail(c0 + i, reason)
                limit = i
                break
        del leaves[limit:]
        return leaves

    def _contiguous(self, seqs: list[int], c0: int, c1: int) -> int:
        """How many rows from c0 on are numbered c0, c0 + 1, ...; records the first gap."""
        if seqs == list(range(c0, c0 + len(seqs))) and len(seqs) == c1 - c0:
            return len(seqs)
        k = next((i for i, s in enumerate(seqs) if s != c0 + i), len(seqs))
        after = f"the next stored entry is {seqs[k]}" if k < len(seqs) else "no entry follows"
        self.fail(c0 + k, f"entry {c0 + k} is missing ({after})")
        return k

    def _beyond_end(self, by_size: dict[int, list[tuple[str, str | None]]]) -> None:
        for s in sorted(s for s in by_size if s > self.size):
            for note, what in by_size[s]:
                if what is not None:
                    try:
                        cpmod.verify(note, self.chain.signers_before(s), self.src.origin)
                    except cpmod.CheckpointError as exc:
                        self.bad = None
                        raise _NotThisLog(f"{what} is not signed by this log's keys: {exc}") from None
                self.fail(self.size, f"{what or 'a checkpoint'} vouches for {s} entries but the log has "
                                     f"{self.size}: entries {self.size} to {s - 1} are missing (the log was truncated)")

    def _checkpoints(self, size: int, root: bytes, notes: list[tuple[str, str | None]]) -> bool:
        allowed = self.chain.signers_before(size)
        for note, label in notes:
            what = label or "the checkpoint"
            try:
                cp, _ = cpmod.verify(note, allowed, self.src.origin)
                if cp.origin != self.src.origin:
                    problem = f"{what} is for origin {cp.origin!r}, not {self.src.origin!r}"
                elif cp.size != size:
                    problem = f"{what} filed under size {size} says {cp.size}"
                elif cp.root != root:
                    problem = f"{what} for {size} entries has a root that does not match the entries"
                else:
                    self.proven = max(self.proven, size)
                    continue
            except cpmod.CheckpointError as exc:
                problem = f"{what} for {size} entries: {exc}"
            if not self._localize(self.proven, size):
                self.fail(max(size - 1, 0), problem)
            return False
        return True

    def _localize(self, start: int, end: int) -> bool:
        """Fast path: check [start, end) in full to name the first bad entry there, if any."""
        if self.deep or start >= end:
            return False
        errors = getattr(self.src, "row_errors", {})
        for pos, (seq, data, leaf, sig) in enumerate(self.src.rows(start, end), start):
            if seq != pos:
                self.fail(pos, f"entry {pos} is missing (the next stored entry is {seq})")
                return True
            if merkle.leaf_hash(data) != leaf:
                self.fail(pos, errors.get(pos) or
                          f"entry {pos} does not match its leaf hash: it was changed after it was written")
                return True
            reason = self._check_entry(pos, data, leaf, sig, apply=False)
            if reason:
                self.fail(pos, reason)
                return True
        return False

    def _check_entry(self, pos: int, data: bytes, leaf: bytes, sig: bytes, apply: bool) -> str | None:
        defer = self.sigs.add if apply and self.sigs is not None else None
        return self.chain.check(pos, data, leaf, sig, apply, defer)

    def _check_nodes(self, c0: int, levels: list[list[bytes]]) -> None:
        for level in range(1, len(levels)):
            lo = c0 >> level
            stored = self.src.nodes(level, lo, lo + len(levels[level]))
            if stored is None:
                return
            for i, h in enumerate(levels[level]):
                if stored.get(lo + i) != h:
                    self._node_failed(level, lo + i)
                    break

    def _check_node(self, level: int, index: int, h: bytes) -> None:
        stored = self.src.nodes(level, index, index + 1)
        if stored is not None and stored.get(index) != h:
            self._node_failed(level, index)

    def _node_failed(self, level: int, index: int) -> None:
        self.fail(index << level, f"stored tree node (level {level}, index {index}) is missing or does not "
                                  f"match the entries {index << level} to {((index + 1) << level) - 1}")


class _NotThisLog(Exception):
    pass


def run(src: Source, deep: bool = False, against: str | None = None,
        pin: Pin | None = None, workers: int | None = None, also: Sequence[tuple[str, str]] = ()) -> dict[str, Any]:
    """Verify a source; see the module docstring. `also`: more (checkpoint note, what to call it)
    the log must extend, as `against` (the fleet's witnessed checkpoints)."""
    try:
        return _Verifier(src, deep, against, pin, workers, also).run()
    except _NotThisLog as exc:
        return result(src.size, None, str(exc))


class DbSource:
    """A read-only snapshot of the live log (one read transaction for everything)."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path).resolve()
        self.conn = sqlite3.connect(f"file:{self.path}?mode=ro", uri=True,
                                    isolation_level=None, check_same_thread=False)
        self.conn.text_factory = bytes
        self.conn.execute("BEGIN")
        meta = dict(self.conn.execute("SELECT name, value FROM audit_meta").fetchall())
        self.origin = meta.get(b"origin", b"").decode("utf-8", "replace")
        last = self.conn.execute("SELECT max(seq) FROM audit_entries").fetchone()[0]
        self.size = 0 if last is None else last + 1
        self.keys = {k.decode("utf-8", "replace"): bytes(v)
                     for k, v in self.conn.execute("SELECT key_id, public_key FROM audit_keys")}
        rows = self.conn.execute("SELECT tree_size, note FROM audit_checkpoints ORDER BY tree_size")
        self.checkpoints = [(s, n.decode("utf-8", "replace")) for s, n in rows]

    def rows(self, start: int, end: int) -> Iterator[Row]:
        return iter(self.conn.execute(
            "SELECT seq, entry, leaf_hash, signature FROM audit_entries WHERE seq >= ? AND seq < ? ORDER BY seq",
            (start, end)))

    def light_rows(self, start: int, end: int) -> Iterator[tuple[bytes, bytes]]:
        return iter(self.conn.execute(
            "SELECT entry, leaf_hash FROM audit_entries WHERE seq >= ? AND seq < ? ORDER BY seq", (start, end)))

    def nodes(self, level: int, lo: int, hi: int) -> dict[int, bytes] | None:
        return dict(self.conn.execute("SELECT idx, hash FROM audit_nodes WHERE level = ? AND idx >= ? AND idx < ?",
                                      (level, lo, hi)))

    def close(self) -> None:
        self.conn.close()


def verify_db(path: Path, deep: bool = False, against: str | None = None,
              pin: Pin | None = None, workers: int | None = None,
              also: Sequence[tuple[str, str]] = ()) -> dict[str, Any]:
    """Verify the log in the SQLite file at `path` (safe while the daemon appends to it)."""
    src = DbSource(path)
    try:
        return run(src, deep, against, pin, workers, also)
    finally:
        src.close()


def verify_export(directory: Path, deep: bool = False, against: str | None = None,
                  pin: Pin | None = None, workers: int | None = None) -> dict[str, Any]:
    """Verify an export directory on its own (a third party's check): see docs/formats.md."""
    from daemon.audit.export import ExportError, ExportSource

    try:
        src = ExportSource(Path(directory))
    except ExportError as exc:
        return result(0, None, str(exc))
    try:
        outcome = run(src, deep, against, pin, workers)
        if outcome["ok"] and src.declared_size is not None and src.declared_size != src.size:
            return result(src.size, min(src.size, src.declared_size),
                          f"the manifest lists {src.declared_size} entries but entries.jsonl has {src.size}")
        return outcome
    finally:
        src.close()
