"""The audit log: an append-only, signed Merkle log in SQLite (WAL, synchronous=FULL).

Appends are group-committed: `append()` queues the entry and waits; one committer task hands
everything queued so far to a single writer thread, which numbers, hashes and signs the entries,
extends the tree, inserts the entries and the tree nodes they complete, writes a checkpoint when
one is due, and commits, all in one transaction and one fsync. Concurrent appends therefore
share a commit, and none resolves before its entry is durable.

Reads (tail, proofs, checkpoints) go through aiosqlite on a second connection; verification and
export open their own read-only connection in a worker thread, so none of them blocks the loop.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
from collections.abc import Callable, Collection, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import aiosqlite
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from daemon.audit import checkpoint as cpmod
from daemon.audit import merkle
from daemon.audit.anchor import ANCHOR_ACTION, LogRows, Trust
from daemon.audit.chain import Pin
from daemon.audit.entry import check_action, check_actor, check_details, check_subject, key_id, utc_now
from daemon.audit.writer import (
    SCHEMA,
    AuditClosed,
    AuditKeyMismatch,
    Record,
    Writer,
    connect_writer,
    entry_dict,
    own_actor,
)
from daemon.crypto.keyid import same_key_id
from daemon.groupcommit import let_others_join, retry_while_locked

__all__ = ["SCHEMA", "AuditClosed", "AuditKeyMismatch", "AuditLog", "connect_writer"]

log = logging.getLogger(__name__)

MAX_TAIL = 1000


class AuditLog:
    """See the module docstring. Create with `await AuditLog.open(...)`."""

    # Set by open(), the only way to make one.
    path: Path
    origin: str
    trust: Trust | None
    on_stall: Callable[[str | None], Any]
    _executor: ThreadPoolExecutor
    _writer: Writer
    _reader: aiosqlite.Connection
    _every_seconds: float
    _max_batch: int
    _delay: float
    _pending: list[tuple[Record, asyncio.Future[dict[str, Any]]]]
    _wake: asyncio.Event
    _subscribers: list[Callable[[dict[str, Any]], Any]]
    _closing: bool
    _closed: bool
    _committer: asyncio.Task[None]

    def __init__(self) -> None:
        raise TypeError("use `await AuditLog.open(...)`")

    @classmethod
    async def open(cls, path: Path, signing_key: Ed25519PrivateKey, origin: str, *,
                   checkpoint_every_entries: int = 1000, checkpoint_every_seconds: float = 60.0,
                   commit_max_batch: int = 1024, commit_max_delay_ms: float = 0.0,
                   previous_key: Ed25519PrivateKey | None = None, trust: Trust | None = None,
                   on_stall: Callable[[str | None], Any] | None = None) -> AuditLog:
        """Open or create the log at `path`.

        A new log records `origin` (the installation name, also the checkpoint key name) and
        starts with entry 0 (`audit.init`) announcing `signing_key`; an existing log keeps the
        origin it was created with (see `.origin`). If the log is signed with another key,
        AuditKeyMismatch is raised, unless `previous_key` is that key: then the rotation to
        `signing_key` is recorded first (recovery from a crash in the middle of a rotation).
        With `trust` (daemon.audit.anchor), the log must start at the anchored key and extend the
        anchored checkpoint (else AuditTrustError), and the anchor follows each checkpoint.
        `on_stall` is told (message) when appends wait on a lock another process holds, (None) once they commit.
        """
        cpmod.check_origin(origin)
        if checkpoint_every_entries < 1 or checkpoint_every_seconds <= 0 or commit_max_batch < 1:
            raise ValueError("checkpoint intervals and the commit batch must be positive")
        self = object.__new__(cls)
        self.path = Path(path)
        self._executor = ThreadPoolExecutor(1, thread_name_prefix="audit-writer")
        loop = asyncio.get_running_loop()
        try:
            self._writer = await loop.run_in_executor(
                self._executor, Writer, self.path, signing_key, origin, checkpoint_every_entries,
                trust.checkpointed if trust is not None else None)
        except BaseException:
            self._executor.shutdown()
            raise
        try:
            await loop.run_in_executor(self._executor, self._adopt_key, signing_key, previous_key, origin, trust)
            self._reader = await aiosqlite.connect(str(self.path))
            await self._reader.execute("PRAGMA busy_timeout=10000")
        except BaseException:
            await loop.run_in_executor(self._executor, self._writer.close)
            self._executor.shutdown()
            raise
        self.origin = self._writer.origin
        self.trust = trust
        self._every_seconds = checkpoint_every_seconds
        self._max_batch = commit_max_batch
        self._delay = commit_max_delay_ms / 1000.0
        self._pending = []
        self._wake = asyncio.Event()
        self._subscribers = []
        self._closing = False
        self._closed = False
        self.on_stall = on_stall or (lambda message: None)
        self._committer = asyncio.create_task(self._commit_loop(), name="audit-committer")
        self._committer.add_done_callback(self._refuse_waiting)
        return self

    @property
    def committer(self) -> asyncio.Task[None]:
        """The task that commits appends; once it has ended the log takes none (AuditClosed)."""
        return self._committer

    def _refuse_waiting(self, committer: asyncio.Task[None]) -> None:
        waiting, self._pending = self._pending, []
        for _, fut in waiting:
            if not fut.done():
                fut.set_exception(AuditClosed("the audit log's committer stopped before writing this entry"))

    def _adopt_key(self, key: Ed25519PrivateKey, previous: Ed25519PrivateKey | None, origin: str,
                   trust: Trust | None) -> None:
        w = self._writer
        if trust is None:
            active = w.active_key_id()
        else:
            in_force = trust.open(LogRows(self.path, w.conn, w.origin, w.size, w.signer.public_raw, w.fetch,
                                          w.frontier.root))
            active = in_force[0] if in_force else None
        if active is None:
            w.initialise(origin)
            return
        if not same_key_id(active, w.kid):
            if previous is None or not same_key_id(key_id(previous.public_key().public_bytes_raw()), active):
                raise AuditKeyMismatch(f"the audit log at {self.path} is signed with key {active}, not with the "
                                       f"given key {w.kid}; keep the old key until its rotation is recorded")
            w.use_key(previous)
            w.rotate(key, own_actor())
        if trust is not None and trust.created is not None:
            details = {"anchor": str(trust.path), "reason": trust.created, "size": w.size}
            w.write([(own_actor(), ANCHOR_ACTION, w.origin, check_details(details), utc_now())])
        if trust is not None and (trust.anchor is None or trust.anchor.size < w.size):
            w.checkpoint(fresh=True)  # over the entries just checked: the anchor covers the whole log

    @property
    def size(self) -> int:
        """Entries committed so far."""
        return self._writer.size

    @property
    def key_id(self) -> str:
        return self._writer.kid

    @property
    def stats(self) -> dict[str, int]:
        """Group commits and entries written by `append` since open (average batch = ratio), and
        checkpoints written since open."""
        w = self._writer
        return {"commits": w.commits, "entries": w.entries_written, "checkpoints": w.checkpoints_written}

    @property
    def checkpointed(self) -> tuple[int, float | None]:
        """(entries the newest checkpoint covers, epoch time it was written; None before any)."""
        return max(0, self._writer.cp_size), self._writer.cp_at

    def subscribe(self, callback: Callable[[dict[str, Any]], Any]) -> Callable[[], None]:
        """Call `callback(entry)` after each entry commits (the `audit` event topic). Returns an
        unsubscribe function."""
        self._subscribers.append(callback)
        return lambda: self._subscribers.remove(callback) if callback in self._subscribers else None

    async def append(self, actor: Mapping[str, Any], action: str, subject: str,
                     details: Mapping[str, Any]) -> dict[str, Any]:
        """Record one action; returns the stored entry once it is durably committed.

        `details` must hold no secrets and no prompt text: record hashes (`prompt_sha256`).
        Keys such as `prompt`, `negative_prompt` or `passphrase` are refused with ValueError.
        """
        if self._closing or self._committer.done():
            raise AuditClosed("the audit log is closed")
        record = (check_actor(actor), check_action(action), check_subject(subject), check_details(details), utc_now())
        fut: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._pending.append((record, fut))
        self._wake.set()
        return await fut

    async def _commit_loop(self) -> None:
        loop = asyncio.get_running_loop()
        w = self._writer
        # One timer per idle spell, not a wait_for (a task and a timer) per commit. It is known to
        # have fired by its callback having run, never by its handle: uvloop answers call_later with
        # a delay under half a millisecond with a plain Handle that has no when().
        checkpoint_timer: asyncio.Handle | None = None

        def checkpoint_due() -> None:
            nonlocal checkpoint_timer
            checkpoint_timer = None
            self._wake.set()

        while True:
            if not self._pending and not self._closing:
                if w.size > w.cp_size and checkpoint_timer is None:
                    due = max(0.0, w.cp_time + self._every_seconds - time.monotonic())
                    checkpoint_timer = loop.call_later(due, checkpoint_due)
                await self._wake.wait()
            self._wake.clear()
            if self._pending:
                await let_others_join(self._pending.__len__)
            if self._delay and 0 < len(self._pending) < self._max_batch and not self._closing:
                await asyncio.sleep(self._delay)
            while self._pending:
                batch = self._pending[: self._max_batch]
                del self._pending[: self._max_batch]
                try:
                    entries = await self._write_batch([r for r, _ in batch])
                except Exception as exc:  # the whole batch failed and was rolled back
                    log.error("audit commit failed: %s", exc)
                    for _, fut in batch:
                        if not fut.done():
                            fut.set_exception(exc)
                    continue
                for (_, fut), entry in zip(batch, entries):
                    if not fut.done():
                        fut.set_result(entry)
                self._publish(entries)
            if w.size > w.cp_size and time.monotonic() - w.cp_time >= self._every_seconds:
                try:
                    await loop.run_in_executor(self._executor, w.checkpoint)
                except Exception as exc:  # retried after the next interval; entries stay signed
                    log.error("audit checkpoint failed: %s", exc)
                    w.cp_time = time.monotonic()
            if self._closing and not self._pending:
                if checkpoint_timer is not None:
                    checkpoint_timer.cancel()
                return

    async def _write_batch(self, records: list[Record]) -> list[dict[str, Any]]:
        """One group commit; while another process holds the write lock, tried again (the appends
        and the actions waiting on them wait, nothing is dropped) unless the log is closing."""
        loop = asyncio.get_running_loop()
        waiting = f"{len(records)} {'entry' if len(records) == 1 else 'entries'}, and the actions they record, wait"
        return await retry_while_locked(lambda: loop.run_in_executor(self._executor, self._writer.write, records),
                                        "the audit log", self.path.name, waiting, self.on_stall,
                                        give_up=lambda: self._closing)

    def _publish(self, entries: list[dict[str, Any]]) -> None:
        for entry in entries:
            for callback in list(self._subscribers):
                try:
                    callback(entry)
                except Exception:
                    log.exception("audit subscriber failed")

    async def _in_writer(self, fn: Callable[..., Any], *args: Any) -> Any:
        if self._closed:
            raise AuditClosed("the audit log is closed")
        return await asyncio.get_running_loop().run_in_executor(self._executor, fn, *args)

    async def checkpoint(self) -> str:
        """Write (if the stored one is not current) and return a signed checkpoint of the log."""
        return await self._in_writer(self._writer.checkpoint)

    async def latest_checkpoint(self) -> str | None:
        async with self._reader.execute(
                "SELECT note FROM audit_checkpoints ORDER BY tree_size DESC LIMIT 1") as cur:
            row = await cur.fetchone()
        return row[0] if row else None

    async def checkpoints(self, since: int = 0) -> list[dict[str, Any]]:
        async with self._reader.execute("SELECT tree_size, note, created_at FROM audit_checkpoints "
                                        "WHERE tree_size >= ? ORDER BY tree_size", (since,)) as cur:
            return [{"tree_size": s, "checkpoint": n, "created_at": c} for s, n, c in await cur.fetchall()]

    async def rotate_signing_key(self, new_key: Ed25519PrivateKey, actor: Mapping[str, Any]) -> dict[str, Any]:
        """Announce `new_key` in an entry signed by the current key, then switch to it."""
        entry = await self._in_writer(self._writer.rotate, new_key, check_actor(actor))
        self._publish([entry])
        return entry

    async def tail(self, limit: int = 50, action: str | None = None, actor: str | None = None,
                   before_seq: int | None = None, subject: str | None = None) -> list[dict[str, Any]]:
        """The latest `limit` entries (oldest first), optionally of one action, one subject (a job
        id, say) and/or one actor (user name, or uid when all digits), before `before_seq`."""
        limit = max(1, min(int(limit), MAX_TAIL))
        where: list[str] = []
        params: list[str | int] = []
        if subject:
            where.append("json_extract(entry, '$.subject') = ?")
            params.append(subject)
        if action:
            where.append("json_extract(entry, '$.action') = ?")
            params.append(action)
        if actor:
            if actor.isdigit():
                where.append("(json_extract(entry, '$.actor.user') = ? OR json_extract(entry, '$.actor.uid') = ?)")
                params += [actor, int(actor)]
            else:
                where.append("json_extract(entry, '$.actor.user') = ?")
                params.append(actor)
        if before_seq is not None:
            where.append("seq < ?")
            params.append(before_seq)
        sql = ("SELECT seq, entry, leaf_hash, signature FROM audit_entries"
               + (" WHERE " + " AND ".join(where) if where else "") + " ORDER BY seq DESC LIMIT ?")
        async with self._reader.execute(sql, (*params, limit)) as cur:
            rows = await cur.fetchall()
        return [entry_dict(*row) for row in reversed(list(rows))]

    async def _nodes(self, keys: set[merkle.NodeKey]) -> dict[merkle.NodeKey, bytes]:
        """Fetch tree nodes in two keyed queries (leaves from the entries, the rest from nodes)."""
        out: dict[merkle.NodeKey, bytes] = {}
        leaves = sorted(i for level, i in keys if level == 0)
        inner = sorted(k for k in keys if k[0] > 0)
        if leaves:
            sql = f"SELECT seq, leaf_hash FROM audit_entries WHERE seq IN ({','.join('?' * len(leaves))})"
            async with self._reader.execute(sql, leaves) as cur:
                out.update({(0, s): h for s, h in await cur.fetchall()})
        if inner:
            # CROSS JOIN keeps this order: one primary-key seek per wanted node, never a scan.
            sql = ("SELECT n.level, n.idx, n.hash FROM (VALUES " + ",".join("(?, ?)" for _ in inner)
                   + ") AS k CROSS JOIN audit_nodes AS n ON n.level = k.column1 AND n.idx = k.column2")
            async with self._reader.execute(sql, [v for k in inner for v in k]) as cur:
                out.update({(lv, i): h for lv, i, h in await cur.fetchall()})
        missing = keys - out.keys()
        if missing:
            raise RuntimeError(f"the audit tree is damaged: nodes {sorted(missing)[:3]} are missing; "
                               "run `sai audit verify --deep`")
        return out

    def _size_arg(self, size: int | None, what: str) -> int:
        current = self.size
        if size is None:
            return current
        if not 0 < size <= current:
            raise ValueError(f"{what} {size} is not between 1 and the log size {current}")
        return size

    async def proof(self, index: int, tree_size: int | None = None) -> dict[str, Any]:
        """Inclusion proof of entry `index` (its leaf index) in the tree of `tree_size` entries."""
        size = self._size_arg(tree_size, "tree_size")
        if not 0 <= index < size:
            raise ValueError(f"index {index} is not an entry of a tree of {size} entries")
        plan = merkle.inclusion_plan(index, size)
        root_plan = merkle.root_plan(size)
        nodes = await self._nodes(merkle.needed([*plan, root_plan, [(0, index)]]))
        return {"index": index, "tree_size": size, "leaf_hash": nodes[(0, index)].hex(),
                "hashes": [h.hex() for h in merkle.resolve(plan, nodes)],
                "root_hash": merkle.fold([nodes[k] for k in root_plan]).hex()}

    async def consistency(self, first: int, second: int | None = None) -> dict[str, Any]:
        """Consistency proof that the tree of `first` entries is a prefix of that of `second`."""
        second = self._size_arg(second, "second")
        if not 0 < first <= second:
            raise ValueError(f"first {first} must be between 1 and second {second}")
        plan = merkle.consistency_plan(first, second)
        p1, p2 = merkle.root_plan(first), merkle.root_plan(second)
        nodes = await self._nodes(merkle.needed([*plan, p1, p2]))
        return {"first": first, "second": second, "hashes": [h.hex() for h in merkle.resolve(plan, nodes)],
                "first_root": merkle.fold([nodes[k] for k in p1]).hex(),
                "second_root": merkle.fold([nodes[k] for k in p2]).hex()}

    async def verify(self, deep: bool = False, against: str | None = None,
                     workers: int | None = None, first_key: bytes | None = None,
                     also: Sequence[tuple[str, str]] = ()) -> dict[str, Any]:
        """Check the log (see daemon.audit.verify); runs in a worker thread on a snapshot. The
        chain must start at `first_key` if given, else at the anchor's key; the log must extend
        `against` and each of `also` ((checkpoint note, what to call it): the fleet's witnessed ones)."""
        from daemon.audit.verify import verify_db

        pin = self.trust.pin() if self.trust is not None else None  # before the snapshot: never beyond it
        if first_key is not None:
            given = "the key given to verify"
            pin = dataclasses.replace(pin, first_key=first_key, source=given) if pin else Pin(first_key, given)
        return await asyncio.to_thread(verify_db, self.path, deep, against, pin, workers, also)

    async def unrecorded_jobs(self, job_ids: Collection[str]) -> list[str]:
        """The ids in `job_ids` that no `job.submit` entry names (read the ids first: a job's
        submit entry commits before the job does, so every job read then has its entry by now)."""
        async with self._reader.execute("SELECT json_extract(entry, '$.subject') FROM audit_entries "
                                        "WHERE json_extract(entry, '$.action') = 'job.submit'") as cur:
            recorded = {row[0] for row in await cur.fetchall()}
        return sorted(set(job_ids) - recorded)

    async def export(self, directory: Path) -> dict[str, Any]:
        """Write entries, checkpoints and public keys to `directory` (new or empty) for
        `verify_export`; a fresh checkpoint is written first so that it covers every entry."""
        from daemon.audit.export import write_export

        await self.checkpoint()
        return await asyncio.to_thread(write_export, self.path, Path(directory))

    async def close(self) -> None:
        """Commit what is queued, write a final checkpoint, and close."""
        if self._closed:
            return
        self._closing = True
        self._wake.set()
        try:
            if not self._committer.done():  # one that died was reported when it did
                await self._committer
        finally:
            try:
                await self._in_writer(self._writer.checkpoint)
            finally:
                self._closed = True
                await asyncio.get_running_loop().run_in_executor(self._executor, self._writer.close)
                self._executor.shutdown()
                await self._reader.close()
