"""The audit log's writer: the one connection that writes, and the tree's right edge.

Everything here runs on the log's single writer thread (see daemon.audit.log): one call of
`write` is one group commit, so entries, the tree nodes they complete and any checkpoint due
land in one transaction with one fsync.
"""

from __future__ import annotations

import base64
import json
import os
import pwd
import sqlite3
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from daemon.audit import checkpoint as cpmod
from daemon.audit import merkle
from daemon.audit.entry import INIT_ACTION, ROTATE_ACTION, check_details, entry_bytes, key_id, leaf_hash, utc_now
from daemon.crypto.ed25519 import Signer
from daemon.timefmt import parse_rfc3339

SCHEMA = """
CREATE TABLE IF NOT EXISTS audit_meta (name TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS audit_entries (
    seq INTEGER PRIMARY KEY,          -- leaf index, from 0
    entry TEXT NOT NULL,              -- canonical entry bytes (UTF-8 JSON)
    leaf_hash BLOB NOT NULL,          -- SHA-256(0x00 || entry)
    signature BLOB NOT NULL           -- Ed25519 over leaf_hash
);
CREATE INDEX IF NOT EXISTS audit_entries_action ON audit_entries (json_extract(entry, '$.action'));
CREATE INDEX IF NOT EXISTS audit_entries_user ON audit_entries (json_extract(entry, '$.actor.user'));
-- audit.tail by subject; IF NOT EXISTS: every open runs this, so logs made before it get the index too
CREATE INDEX IF NOT EXISTS audit_entries_subject ON audit_entries (json_extract(entry, '$.subject'));
CREATE TABLE IF NOT EXISTS audit_nodes (
    level INTEGER NOT NULL, idx INTEGER NOT NULL, hash BLOB NOT NULL,
    PRIMARY KEY (level, idx)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS audit_checkpoints (
    tree_size INTEGER PRIMARY KEY, root_hash BLOB NOT NULL, note TEXT NOT NULL, created_at TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS audit_keys (
    key_id TEXT PRIMARY KEY, public_key BLOB NOT NULL, first_seq INTEGER NOT NULL, created_at TEXT NOT NULL
);
"""
FORMAT_VERSION = "1"


class AuditKeyMismatch(ValueError):
    """The signing key given to `open` is not the key the log is currently signed with."""


class AuditClosed(RuntimeError):
    pass


def own_actor() -> dict[str, Any]:
    uid = os.getuid()
    try:
        user = pwd.getpwuid(uid).pw_name
    except KeyError:
        user = f"uid{uid}"
    return {"uid": uid, "user": user, "pid": os.getpid()}


def connect_writer(path: Path) -> sqlite3.Connection:
    conn = sqlite3.connect(str(path), isolation_level=None, check_same_thread=False)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=FULL")
    conn.execute("PRAGMA busy_timeout=5000")  # then the committer alerts and keeps trying (log.py)
    conn.executescript(SCHEMA)
    return conn


def entry_dict(seq: int, text: str, leaf: bytes, signature: bytes) -> dict[str, Any]:
    """A stored entry as the API returns it: the entry fields plus hex leaf hash and signature."""
    entry = json.loads(text)
    entry["seq"] = seq
    entry["leaf_hash"] = leaf.hex()
    entry["signature"] = signature.hex()
    return entry


Record = tuple[dict[str, Any], str, str, str, str]
"""(actor, action, subject, details JSON, time) of an entry waiting to be written."""


class Writer:
    """Owns the write connection and the tree's right edge; runs only on the writer thread."""

    def __init__(self, path: Path, key: Ed25519PrivateKey, origin: str, every_entries: int,
                 on_checkpoint: Callable[[int, bytes, str], None] | None = None) -> None:
        self.conn = connect_writer(path)
        self.on_checkpoint = on_checkpoint
        """Told (size, root, note) of each checkpoint once it has committed."""
        self._uncommitted: tuple[int, bytes, str] | None = None
        self.use_key(key)
        self.every_entries = every_entries
        meta = dict(self.conn.execute("SELECT name, value FROM audit_meta").fetchall())
        self.origin = meta.get("origin", origin)
        last = self.conn.execute("SELECT max(seq) FROM audit_entries").fetchone()[0]
        size = 0 if last is None else last + 1
        self.frontier = merkle.Frontier(size, self.fetch(merkle.root_plan(size)))
        row = self.conn.execute("SELECT tree_size, note, created_at FROM audit_checkpoints "
                                "ORDER BY tree_size DESC LIMIT 1").fetchone()
        self.cp_size: int = row[0] if row else -1
        self.cp_note: str | None = row[1] if row else None
        self.cp_time = time.monotonic()
        self.cp_at: float | None = parse_rfc3339(row[2]) if row else None
        """Wall-clock time the newest stored checkpoint committed (the metrics' staleness figure)."""
        self.commits = 0
        self.entries_written = 0
        self.checkpoints_written = 0

    def use_key(self, key: Ed25519PrivateKey) -> None:
        """Sign the next entries with `key` (it must be the key in force: see `rotate`)."""
        self.key, self.kid, self.signer = key, key_id(key.public_key().public_bytes_raw()), Signer(key)

    @property
    def size(self) -> int:
        return self.frontier.size

    def fetch(self, keys: list[merkle.NodeKey]) -> list[bytes]:
        """Stored tree nodes (level 0: the entries' leaf hashes), in the order asked."""
        out = []
        for level, idx in keys:
            if level == 0:
                row = self.conn.execute("SELECT leaf_hash FROM audit_entries WHERE seq = ?", (idx,)).fetchone()
            else:
                row = self.conn.execute("SELECT hash FROM audit_nodes WHERE level = ? AND idx = ?",
                                        (level, idx)).fetchone()
            if row is None:
                raise RuntimeError(f"the audit tree is damaged: node ({level}, {idx}) is missing; "
                                   "run `sai audit verify --deep`")
            out.append(row[0])
        return out

    def active_key_id(self) -> str | None:
        """The key the next entry must be signed with, as the stored log says."""
        row = self.conn.execute("SELECT entry FROM audit_entries ORDER BY seq DESC LIMIT 1").fetchone()
        if row is None:
            return None
        last = json.loads(row[0])
        if last["action"] == ROTATE_ACTION:
            return str(last["details"]["new_key_id"])
        return str(last["key_id"])

    def initialise(self, origin: str) -> dict[str, Any]:
        """A new log: meta, the first key, entry 0 announcing it, and the first checkpoint."""
        raw = self.key.public_key().public_bytes_raw()
        self.origin = cpmod.check_origin(origin)
        details = {"origin": origin, "key_id": self.kid, "public_key": base64.b64encode(raw).decode(), "format": 1}
        self.conn.execute("BEGIN IMMEDIATE")
        try:
            self.conn.executemany("INSERT INTO audit_meta VALUES (?, ?)",
                                  [("origin", origin), ("format", FORMAT_VERSION)])
            self.conn.execute("INSERT INTO audit_keys VALUES (?, ?, 0, ?)", (self.kid, raw, utc_now()))
            entries = self._insert([(own_actor(), INIT_ACTION, origin, check_details(details), utc_now())])
            self._checkpoint()
            self.conn.execute("COMMIT")
        except BaseException:
            self._rollback()
            raise
        self._committed()
        return entries[0]

    def _rollback(self) -> None:
        self._uncommitted = None
        if self.conn.in_transaction:
            self.conn.execute("ROLLBACK")

    def _committed(self) -> None:
        done, self._uncommitted = self._uncommitted, None
        if done is not None:
            self.checkpoints_written += 1
            self.cp_at = time.time()
        if done is not None and self.on_checkpoint is not None:
            self.on_checkpoint(*done)

    def _insert(self, records: Iterable[Record]) -> list[dict[str, Any]]:
        rows, nodes, out = [], [], []
        signer, kid, frontier = self.signer, self.kid, self.frontier
        for actor, action, subject, details_json, stamp in records:
            seq = frontier.size
            data = entry_bytes(seq, stamp, actor, action, subject, details_json, kid)
            leaf = leaf_hash(data)
            signature = signer.sign(leaf)
            nodes.extend(frontier.append(leaf))
            rows.append((seq, data.decode("utf-8"), leaf, signature))
            out.append({"action": action, "actor": dict(actor), "details": json.loads(details_json), "key_id": kid,
                        "seq": seq, "subject": subject, "time": stamp, "leaf_hash": leaf.hex(),
                        "signature": signature.hex()})
        self.conn.executemany("INSERT INTO audit_entries VALUES (?, ?, ?, ?)", rows)
        self.conn.executemany("INSERT OR REPLACE INTO audit_nodes VALUES (?, ?, ?)", nodes)
        return out

    @contextmanager
    def _transaction(self) -> Iterator[None]:
        """One IMMEDIATE transaction; on any failure the database and the in-memory frontier
        both go back to where they were."""
        before = self.frontier.copy()
        try:
            self.conn.execute("BEGIN IMMEDIATE")
            yield
            self.conn.execute("COMMIT")
        except BaseException:
            self._rollback()
            self.frontier = before
            raise
        self._committed()

    def write(self, records: list[Record]) -> list[dict[str, Any]]:
        """One group commit."""
        with self._transaction():
            entries = self._insert(records)
            if self.size - self.cp_size >= self.every_entries:
                self._checkpoint()
        self.commits += 1
        self.entries_written += len(entries)
        return entries

    def _checkpoint(self) -> str:
        root = self.frontier.root()
        note = cpmod.sign(self.origin, self.size, root, self.key)
        self.conn.execute("INSERT OR REPLACE INTO audit_checkpoints VALUES (?, ?, ?, ?)",
                          (self.size, root, note, utc_now()))
        self.cp_size, self.cp_note, self.cp_time = self.size, note, time.monotonic()
        self._uncommitted = (self.size, root, note)
        return note

    def checkpoint(self, fresh: bool = False) -> str:
        """A checkpoint of the current size (the stored one if it is current and by this key,
        unless `fresh`)."""
        if self.cp_note and self.cp_size == self.size and not fresh:
            mine = cpmod.key_hash(self.origin, self.key.public_key().public_bytes_raw())
            if any(h == mine for _, h, _ in cpmod.parse(self.cp_note).signatures):
                return self.cp_note
        self.conn.execute("BEGIN IMMEDIATE")
        try:
            note = self._checkpoint()
            self.conn.execute("COMMIT")
        except BaseException:
            self._rollback()
            raise
        self._committed()
        return note

    def rotate(self, new_key: Ed25519PrivateKey, actor: dict[str, Any]) -> dict[str, Any]:
        """Announce `new_key` in an entry signed by the current key, checkpoint with the current
        key, then sign with the new one from the next entry on."""
        raw = new_key.public_key().public_bytes_raw()
        new_kid = key_id(raw)
        if new_kid == self.kid:
            raise ValueError("the new audit signing key is the current one")
        details = {"old_key_id": self.kid, "new_key_id": new_kid, "new_public_key": base64.b64encode(raw).decode()}
        with self._transaction():
            entry = self._insert([(actor, ROTATE_ACTION, new_kid, check_details(details), utc_now())])[0]
            self.conn.execute("INSERT OR REPLACE INTO audit_keys VALUES (?, ?, ?, ?)",
                              (new_kid, raw, self.size, utc_now()))
            self._checkpoint()
        self.use_key(new_key)
        return entry

    def close(self) -> None:
        self.conn.close()
