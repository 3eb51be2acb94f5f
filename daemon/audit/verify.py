"""Verification of an audit log, live (the SQLite file) or exported (a directory).

Both run the same check over a `Source` of rows `(seq, entry bytes, leaf hash, signature)`:

- Always: entries are numbered 0, 1, 2, ... without gaps; each entry's bytes hash to its stored
  leaf hash; the Merkle tree rebuilt from the entries has, at each checkpoint's size, the root
  that checkpoint carries; each checkpoint is signed by a key of the log's key chain that was
  announced before that size. Entry 0 (`audit.init`) and every `audit.key_rotate` entry are
  checked in full, and so is every entry after the last checkpoint (no checkpoint covers them).
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

import base64
import binascii
import collections
import hashlib
import multiprocessing
import os
import sqlite3
from concurrent.futures import Future, ProcessPoolExecutor
from pathlib import Path
from typing import Any, Collection, Iterator, Protocol

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from daemon.audit import checkpoint as cpmod
from daemon.audit import merkle
from daemon.audit.entry import INIT_ACTION, ROTATE_ACTION, ROTATE_PREFIX, key_id, parse_entry

CHUNK_LEVEL = 14
CHUNK = 1 << CHUNK_LEVEL
POOL_MIN_ENTRIES = 20_000
"""Deep checks of fewer signatures than this run in the calling thread (a pool costs ~1 s to start)."""
POOL_BATCH = 4096

Row = tuple[int, bytes, bytes, bytes]


class BadRow(Exception):
    """A row a source cannot even read (e.g. a malformed export line)."""

    def __init__(self, seq: int, reason: str) -> None:
        super().__init__(reason)
        self.seq, self.reason = seq, reason


class Source(Protocol):
    origin: str
    size: int
    keys: dict[str, bytes]
    """key id -> raw Ed25519 public key, as the store records them."""
    checkpoints: list[tuple[int, str]]
    """(size the checkpoint is filed under, signed note)."""

    def rows(self, start: int, end: int) -> Iterator[Row]: ...

    def nodes(self, level: int, lo: int, hi: int) -> dict[int, bytes] | None:
        """Stored tree nodes of `level` with index in [lo, hi), or None if the source keeps none."""


def result(size: int, first_bad: int | None = None, reason: str | None = None) -> dict[str, Any]:
    return {"ok": first_bad is None and reason is None, "size": size, "first_bad": first_bad, "reason": reason}


def _verify_batch(start: int, public_raw: bytes, leaves: bytes, signatures: bytes) -> int | None:
    """Pool worker: the first position in the batch whose signature fails, or None."""
    key = Ed25519PublicKey.from_public_bytes(public_raw)
    for i in range(len(leaves) // 32):
        try:
            key.verify(signatures[64 * i: 64 * i + 64], leaves[32 * i: 32 * i + 32])
        except InvalidSignature:
            return start + i
    return None


class _Signatures:
    """Signature checks of the deep path: inline, or batched into a process pool."""

    def __init__(self, workers: int) -> None:
        self.pool = ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn")) if workers > 1 else None
        self.limit = 2 * workers
        self.futures: collections.deque[Future[int | None]] = collections.deque()
        self.batch: tuple[int, bytes, list[bytes], list[bytes]] | None = None
        self.first_bad: int | None = None

    def add(self, pos: int, public_raw: bytes, leaf: bytes, signature: bytes) -> bool:
        """Queue (pool) or do (inline) one check; False when an inline check failed."""
        if self.pool is None:
            try:
                Ed25519PublicKey.from_public_bytes(public_raw).verify(signature, leaf)
            except InvalidSignature:
                return False
            return True
        b = self.batch
        if b is None or b[1] != public_raw or b[0] + len(b[2]) != pos or len(b[2]) >= POOL_BATCH:
            self.flush()
            self.batch = b = (pos, public_raw, [], [])
        b[2].append(leaf)
        b[3].append(signature if len(signature) == 64 else bytes(64))
        return True

    def flush(self) -> None:
        if self.batch and self.pool is not None:
            start, raw, leaves, sigs = self.batch
            self.futures.append(self.pool.submit(_verify_batch, start, raw, b"".join(leaves), b"".join(sigs)))
            while len(self.futures) > self.limit:
                self._collect(self.futures.popleft())
        self.batch = None

    def _collect(self, fut: Future[int | None]) -> None:
        bad = fut.result()
        if bad is not None and (self.first_bad is None or bad < self.first_bad):
            self.first_bad = bad

    def finish(self) -> int | None:
        self.flush()
        while self.futures:
            self._collect(self.futures.popleft())
        if self.pool is not None:
            self.pool.shutdown()
        return self.first_bad


class _Verifier:
    def __init__(self, src: Source, deep: bool, against: str | None, trusted: Collection[bytes] | None,
                 workers: int | None) -> None:
        self.src, self.deep, self.against, self.trusted = src, deep, against, trusted
        self.size = src.size
        self.bad: tuple[int, str] | None = None
        self.key_history: list[tuple[int, str, bytes]] = []
        """(first seq it signs, key id, raw key), in order."""
        self.announced: list[tuple[int, bytes]] = []
        """(seq of the entry announcing it, raw key): which keys may sign a checkpoint of a size."""
        self.proven = 0
        if workers is None:
            workers = os.cpu_count() or 1
        self.sigs = _Signatures(workers if deep and self.size >= POOL_MIN_ENTRIES else 0)

    def fail(self, seq: int, reason: str) -> None:
        if self.bad is None or seq < self.bad[0]:
            self.bad = (seq, reason)

    def run(self) -> dict[str, Any]:
        try:
            return self._run()
        finally:
            self.sigs.finish()

    def _run(self) -> dict[str, Any]:
        by_size: dict[int, list[tuple[str, bool]]] = collections.defaultdict(list)
        for label, note in self.src.checkpoints:
            by_size[label].append((note, False))
        external_size: int | None = None
        if self.against is not None:
            try:
                external_size = cpmod.parse(self.against).size
            except cpmod.CheckpointError as exc:
                return result(self.size, None, f"the checkpoint to check against is not valid: {exc}")
            by_size[external_size].append((self.against, True))
        stored = [s for s, notes in by_size.items() if any(not ext for _, ext in notes) and s <= self.size]
        tail_from = max(stored, default=0)
        sizes = sorted(s for s in by_size if 0 < s <= self.size)
        if 0 in by_size:
            self._checkpoints(0, merkle.EMPTY_ROOT, by_size[0])
        frontier = merkle.Frontier()
        rows = self.src.rows(0, self.size)
        pos, stop, next_cp = 0, False, 0
        while pos < self.size and not stop:
            c0, leaves = pos, []
            sha = hashlib.sha256
            try:
                for seq, data, leaf, sig in rows:
                    if seq != pos:
                        self.fail(pos, f"entry {pos} is missing (the next stored entry is {seq})")
                        stop = True
                        break
                    h = sha(b"\x00" + data).digest()
                    if h != leaf:
                        self.fail(pos, f"entry {pos} does not match its leaf hash: it was changed after it was written")
                        stop = True
                        break
                    if self.deep or pos >= tail_from or pos == 0 or data.startswith(ROTATE_PREFIX):
                        reason = self._check_entry(pos, data, leaf, sig, apply=True)
                        if reason:
                            self.fail(pos, reason)
                            stop = True
                            break
                    leaves.append(h)
                    pos += 1
                    if pos - c0 == CHUNK:
                        break
                else:
                    if pos < self.size:
                        self.fail(pos, f"entries {pos} to {self.size - 1} are missing")
                        stop = True
            except BadRow as exc:
                self.fail(exc.seq, exc.reason)
                stop = True
            levels = merkle.levels(leaves)
            if self.deep and leaves:
                self._check_nodes(c0, levels)
            while next_cp < len(sizes) and sizes[next_cp] <= pos:
                s = sizes[next_cp]
                next_cp += 1
                root = merkle.fold(frontier.hashes() + merkle.chunk_subtrees(levels, s - c0))
                if not self._checkpoints(s, root, by_size[s]):
                    stop = True
                    break
            if not stop and len(leaves) == CHUNK:
                made = frontier.push_subtree(CHUNK_LEVEL, levels[-1][0])
                if self.deep:
                    for level, index, h in made:
                        self._check_node(level, index, h)
        if stop and self.bad is not None:
            self._localize(self.proven, self.bad[0])
        bad_sig = self.sigs.finish()
        if bad_sig is not None:
            self.fail(bad_sig, f"entry {bad_sig}: the signature does not verify")
        if self.bad is None:
            self._beyond_end(by_size, external_size)
        if self.bad is None and self.trusted is not None:
            if not any(raw in self.trusted for _, _, raw in self.key_history):
                return result(self.size, None, "no key of this log's key chain is among the trusted keys")
        return result(self.size, *(self.bad if self.bad else (None, None)))

    def _beyond_end(self, by_size: dict[int, list[tuple[str, bool]]], external_size: int | None) -> None:
        for s in sorted(s for s in by_size if s > self.size):
            for note, external in by_size[s]:
                if external:
                    try:
                        cpmod.verify(note, [raw for _, raw in self.announced], self.src.origin)
                    except cpmod.CheckpointError as exc:
                        self.bad = None
                        raise _NotThisLog(str(exc)) from None
                self.fail(self.size, f"a checkpoint vouches for {s} entries but the log has {self.size}: "
                                     f"entries {self.size} to {s - 1} are missing")

    def _checkpoints(self, size: int, root: bytes, notes: list[tuple[str, bool]]) -> bool:
        allowed = [raw for seq, raw in self.announced if seq < size]
        for note, external in notes:
            what = "the checkpoint checked against" if external else "the checkpoint"
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
        try:
            for pos, (seq, data, leaf, sig) in enumerate(self.src.rows(start, end), start):
                if seq != pos:
                    self.fail(pos, f"entry {pos} is missing (the next stored entry is {seq})")
                    return True
                if merkle.leaf_hash(data) != leaf:
                    self.fail(pos, f"entry {pos} does not match its leaf hash: it was changed after it was written")
                    return True
                reason = self._check_entry(pos, data, leaf, sig, apply=False)
                if reason:
                    self.fail(pos, reason)
                    return True
        except BadRow as exc:
            self.fail(exc.seq, exc.reason)
            return True
        return False

    def _key_at(self, pos: int) -> tuple[str, bytes] | None:
        found = None
        for first, kid, raw in self.key_history:
            if first > pos:
                break
            found = (kid, raw)
        return found

    def _check_entry(self, pos: int, data: bytes, leaf: bytes, sig: bytes, apply: bool) -> str | None:
        try:
            e = parse_entry(data)
        except ValueError as exc:
            return f"entry {pos} is not a valid entry: {exc}"
        if e["seq"] != pos:
            return f"entry at position {pos} says it is entry {e['seq']} (entries were removed, inserted or moved)"
        if pos == 0:
            reason = self._genesis(e, apply)
            if reason:
                return reason
        current = self._key_at(pos)
        if current is None:
            return f"entry {pos}: no signing key is in force"
        kid, raw = current
        if e["key_id"] != kid:
            return f"entry {pos} names signing key {e['key_id']}, but the key in force is {kid}"
        if apply and self.deep and self.sigs.pool is not None:
            self.sigs.add(pos, raw, leaf, sig)
        else:
            try:
                Ed25519PublicKey.from_public_bytes(raw).verify(sig, leaf)
            except (InvalidSignature, ValueError):
                return f"entry {pos}: the signature does not verify with key {kid}"
        if e["action"] == ROTATE_ACTION:
            return self._rotation(pos, e, apply)
        return None

    def _public_key(self, text: Any, kid: Any, pos: int) -> bytes | str:
        try:
            raw = base64.b64decode(text, validate=True) if isinstance(text, str) else b""
        except (binascii.Error, ValueError):
            raw = b""
        if len(raw) != 32:
            return f"entry {pos} does not carry a valid public key"
        if key_id(raw) != kid:
            return f"entry {pos}: key id {kid} does not belong to the public key it carries"
        if self.src.keys.get(kid) != raw:
            return f"entry {pos}: key {kid} is missing from the key store or differs from it"
        return raw

    def _genesis(self, e: dict[str, Any], apply: bool) -> str | None:
        d = e["details"]
        if e["action"] != INIT_ACTION:
            return f"entry 0 is {e['action']!r}, not {INIT_ACTION!r}: the start of the log is gone"
        if d.get("origin") != self.src.origin:
            return f"entry 0 names origin {d.get('origin')!r}, but the log is {self.src.origin!r}"
        if d.get("key_id") != e["key_id"]:
            return "entry 0 is not signed by the key it announces"
        raw = self._public_key(d.get("public_key"), e["key_id"], 0)
        if isinstance(raw, str):
            return raw
        if apply:
            self.key_history = [(0, e["key_id"], raw)]
            self.announced = [(-1, raw)]
        return None

    def _rotation(self, pos: int, e: dict[str, Any], apply: bool) -> str | None:
        d = e["details"]
        if d.get("old_key_id") != e["key_id"]:
            return f"entry {pos}: a key rotation must be signed by the key it replaces"
        raw = self._public_key(d.get("new_public_key"), d.get("new_key_id"), pos)
        if isinstance(raw, str):
            return raw
        if apply:
            self.key_history.append((pos + 1, d["new_key_id"], raw))
            self.announced.append((pos, raw))
        return None

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
        trusted: Collection[bytes] | None = None, workers: int | None = None) -> dict[str, Any]:
    """Verify a source; see the module docstring."""
    try:
        return _Verifier(src, deep, against, trusted, workers).run()
    except _NotThisLog as exc:
        return result(src.size, None, f"the checkpoint to check against is not signed by this log's keys: {exc}")


class DbSource:
    """A read-only snapshot of the live log (one read transaction for everything)."""

    def __init__(self, path: Path) -> None:
        self.conn = sqlite3.connect(f"file:{Path(path).resolve()}?mode=ro", uri=True,
                                    isolation_level=None, check_same_thread=False)
        self.conn.text_factory = bytes
        self.conn.execute("BEGIN")
        meta = dict(self.conn.execute("SELECT name, value FROM audit_meta").fetchall())
        self.origin = meta.get(b"origin", b"").decode("utf-8", "replace")
        last = self.conn.execute("SELECT max(seq) FROM audit_entries").fetchone()[0]
        self.size = 0 if last is None else last + 1
        self.keys = {k.decode("utf-8", "replace"): bytes(v)
                     for k, v in self.conn.execute("SELECT key_id, public_key FROM audit_keys")}
        self.checkpoints = [(s, n.decode("utf-8", "replace"))
                            for s, n in self.conn.execute("SELECT tree_size, note FROM audit_checkpoints ORDER BY tree_size")]

    def rows(self, start: int, end: int) -> Iterator[Row]:
        return iter(self.conn.execute(
            "SELECT seq, entry, leaf_hash, signature FROM audit_entries WHERE seq >= ? AND seq < ? ORDER BY seq",
            (start, end)))

    def nodes(self, level: int, lo: int, hi: int) -> dict[int, bytes] | None:
        return dict(self.conn.execute("SELECT idx, hash FROM audit_nodes WHERE level = ? AND idx >= ? AND idx < ?",
                                      (level, lo, hi)))

    def close(self) -> None:
        self.conn.close()


def verify_db(path: Path, deep: bool = False, against: str | None = None,
              trusted: Collection[bytes] | None = None, workers: int | None = None) -> dict[str, Any]:
    """Verify the log in the SQLite file at `path` (safe while the daemon appends to it)."""
    src = DbSource(path)
    try:
        return run(src, deep, against, trusted, workers)
    finally:
        src.close()


def verify_export(directory: Path, deep: bool = False, against: str | None = None,
                  trusted: Collection[bytes] | None = None, workers: int | None = None) -> dict[str, Any]:
    """Verify an export directory on its own (a third party's check): see docs/formats.md."""
    from daemon.audit.export import ExportError, ExportSource

    try:
        src = ExportSource(Path(directory))
    except ExportError as exc:
        return result(0, None, str(exc))
    try:
        outcome = run(src, deep, against, trusted, workers)
        if outcome["ok"] and src.declared_size is not None and src.declared_size != src.size:
            return result(src.size, min(src.size, src.declared_size),
                          f"the manifest lists {src.declared_size} entries but entries.jsonl has {src.size}")
        return outcome
    finally:
        src.close()
