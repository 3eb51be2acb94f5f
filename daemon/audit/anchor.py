"""The audit log's anchor: the key its chain starts at and the checkpoint it must extend, kept
outside `audit.db` (in `state/keys/audit-anchor.json`, beside the keys).

Whoever can write `audit.db` can write a whole new log, signed by a key of their own, that is
consistent with itself; and a log cut short, with its later checkpoints removed, is consistent
too. The anchor is what such a log is checked against: at every start (`Trust.open`, before the
daemon signs anything) and by every `audit.verify` (`Trust.pin`).

    {"format": "sai-audit-anchor/1", "origin": ..., "first_key_id": ..., "first_public_key": base64,
     "size": N, "root": hex, "checkpoint": "<signed note of size N>", "updated_at": RFC 3339}

Written atomically (temp file, fsync, rename, fsync of the directory), mode 0600, after each
checkpoint commits: it never names more entries than the log durably holds.
"""

from __future__ import annotations

import base64
import binascii
import itertools
import json
import logging
import sqlite3
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from daemon.audit import checkpoint as cpmod
from daemon.audit import merkle
from daemon.audit.chain import KeyChain, Pin
from daemon.audit.entry import ROTATE_ACTION, Row, key_id, utc_now
from daemon.audit.verify import verify_db
from daemon.safefiles import atomic_write

FORMAT = "sai-audit-anchor/1"
FILE_NAME = "audit-anchor.json"
ANCHOR_ACTION = "audit.anchor"
"""Recorded when a start made the anchor from a log that had none (a state dir from before anchors)."""

log = logging.getLogger("sai.audit")

_ROWS = "SELECT seq, CAST(entry AS BLOB), leaf_hash, signature FROM audit_entries WHERE "


class AuditTrustError(Exception):
    """The audit log does not start at the pinned key, or does not extend the anchored checkpoint."""


@dataclass(frozen=True)
class Anchor:
    origin: str
    first_key: bytes
    size: int
    root: bytes
    checkpoint: str

    def to_json(self) -> bytes:
        return json.dumps({"format": FORMAT, "origin": self.origin, "first_key_id": key_id(self.first_key),
                           "first_public_key": base64.b64encode(self.first_key).decode(), "size": self.size,
                           "root": self.root.hex(), "checkpoint": self.checkpoint, "updated_at": utc_now()},
                          indent=1, sort_keys=True).encode() + b"\n"

    @classmethod
    def from_json(cls, data: bytes, where: Path) -> Anchor:
        try:
            d = json.loads(data)
            if d.get("format") != FORMAT:
                raise ValueError(f"format is {d.get('format')!r}, not {FORMAT!r}")
            first = base64.b64decode(d["first_public_key"], validate=True)
            anchor = cls(str(d["origin"]), first, int(d["size"]), bytes.fromhex(d["root"]), str(d["checkpoint"]))
            cp = cpmod.parse(anchor.checkpoint)
        except (ValueError, KeyError, TypeError, AttributeError, binascii.Error) as exc:
            raise AuditTrustError(f"the audit anchor {where} is damaged ({exc}); restore it from a backup of "
                                  f"the keys directory") from None
        if len(first) != 32 or cp.size != anchor.size or cp.root != anchor.root or cp.origin != anchor.origin:
            raise AuditTrustError(f"the audit anchor {where} does not agree with the checkpoint it holds; "
                                  f"restore it from a backup of the keys directory")
        return anchor


class Trust:
    """The daemon's side of the anchor: checks the log at open, keeps the anchor current, and
    pins every verification. `known_keys()` gives the key store's public keys by audit key id."""

    def __init__(self, path: Path, known_keys: Callable[[], Mapping[str, bytes]]) -> None:
        self.path = path
        self.known_keys = known_keys
        self.anchor: Anchor | None = None
        self.created: str | None = None
        """Why this start made the anchor (a new log, or a state dir from before anchors), if it did."""
        self.error: str | None = None
        """Why the anchor could not be updated last time, while that lasts."""
        self._first_key: bytes | None = None

    def load(self) -> Anchor | None:
        try:
            data = self.path.read_bytes()
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise AuditTrustError(f"cannot read the audit anchor {self.path}: {exc.strerror}") from None
        return Anchor.from_json(data, self.path)

    def pin(self) -> Pin | None:
        """What `audit.verify` checks the log against (None before the anchor exists)."""
        a = self.anchor
        if a is None:
            return None
        return Pin(a.first_key, str(self.path), dict(self.known_keys()), a.checkpoint)

    def status(self) -> dict[str, Any]:
        a = self.anchor
        return {"file": str(self.path), "size": a.size if a else None, "root": a.root.hex() if a else None,
                "first_key_id": key_id(a.first_key) if a else None, "error": self.error}

    def checkpointed(self, size: int, root: bytes, note: str) -> None:
        """A checkpoint has committed (on the log's writer thread): the anchor moves up to it."""
        a = self.anchor
        first = a.first_key if a is not None else self._first_key
        if first is None or (a is not None and size <= a.size):
            return
        new = Anchor(a.origin if a is not None else cpmod.parse(note).origin, first, size, root, note)
        try:
            atomic_write(self.path, new.to_json(), 0o600)
        except OSError as exc:
            self.error = f"cannot write {self.path}: {exc.strerror}"
            log.error("the audit anchor stays at %d entries: %s", a.size if a else 0, self.error)
            return
        self.anchor, self.error = new, None

    def open(self, rows: LogRows) -> tuple[str, bytes] | None:
        """At open, before anything is signed: (key id, raw key) in force at the end of the log as
        the chain from the pinned key says, or None for an empty log. AuditTrustError if the log
        does not start at the pinned key or does not extend the anchored checkpoint."""
        self.anchor = self.load()
        if rows.size == 0:
            if self.anchor is not None:
                raise self._refuse(rows, f"it is empty, but {self.path} anchors {self.anchor.size} entries: the "
                                         "log was deleted or replaced; restore audit.db from backup")
            self._first_key, self.created = rows.signing_public, "a new audit log"
            return None
        if self.anchor is None:
            return self._adopt(rows)
        a = self.anchor
        if rows.origin != a.origin:
            raise self._refuse(rows, f"it is the log of {rows.origin!r}, but {self.path} anchors {a.origin!r}")
        if rows.size < a.size:
            raise self._refuse(rows, f"it has {rows.size} entries, but the checkpoint anchored in {self.path} "
                                     f"vouches for {a.size}: entries {rows.size} to {a.size - 1} were removed (the "
                                     "log was truncated); restore audit.db from backup")
        chain = self._walk(rows, Pin(a.first_key, str(self.path), dict(self.known_keys())), a.size)
        try:
            cpmod.verify(a.checkpoint, chain.signers_before(a.size), a.origin)
        except cpmod.CheckpointError as exc:
            raise self._refuse(rows, f"the checkpoint anchored in {self.path} is not signed by the log's keys "
                                     f"({exc})") from None
        try:
            frontier = merkle.Frontier(a.size, rows.fetch(merkle.root_plan(a.size)))
        except RuntimeError as exc:  # stored tree nodes missing
            raise self._refuse(rows, f"{exc}") from None
        if frontier.root() != a.root:
            raise self._refuse(rows, f"it does not extend the checkpoint anchored in {self.path}: its tree of "
                                     f"{a.size} entries has another root, so entries before {a.size} were "
                                     "changed, removed or replaced; restore audit.db from backup")
        self._check_tail(rows, chain, frontier, a.size)
        return chain.key_at(rows.size)

    def _adopt(self, rows: LogRows) -> tuple[str, bytes] | None:
        """No anchor beside an existing log: a state dir from before anchors (or an anchor that was
        removed). The whole log is verified, its chain must start at a key of the key store, and
        the anchor is made from it at once (the log records that it was)."""
        first = rows.first_key()
        if first is None:
            raise self._refuse(rows, "entry 0 does not announce a valid signing key")
        pin = Pin(first, f"entry 0 (no {self.path.name} yet)", dict(self.known_keys()))
        outcome = verify_db(rows.path, pin=pin)
        if not outcome["ok"]:
            where = f" (first bad entry: {outcome['first_bad']})" if outcome["first_bad"] is not None else ""
            raise self._refuse(rows, f"there is no {self.path} yet and the log does not verify{where}: "
                                     f"{outcome['reason']}")
        log.warning("no audit anchor at %s: making one from the current log (%d entries, verified, chain starting "
                    "at key %s of the key store); from now on the log must extend it", self.path, rows.size,
                    key_id(first))
        self._first_key, self.created = first, f"no {self.path.name}: made from the verified log"
        return self._walk(rows, pin, rows.size).key_at(rows.size)

    def _walk(self, rows: LogRows, pin: Pin, upto: int) -> KeyChain:
        """Entry 0 against the pin, then every key rotation before `upto`, signatures checked."""
        chain = KeyChain(rows.origin, pin.known_keys or {}, pin)
        for seq, data, leaf, sig in rows.key_entries(upto):
            reason = (f"entry {seq} does not match its leaf hash" if merkle.leaf_hash(data) != leaf
                      else chain.check(seq, data, leaf, sig, apply=True))
            if reason:
                raise self._refuse(rows, reason)
        return chain

    def _check_tail(self, rows: LogRows, chain: KeyChain, frontier: merkle.Frontier, start: int) -> None:
        """Entries after the anchored checkpoint are covered by no signature outside the log yet:
        each is checked in full before the daemon signs a checkpoint over them."""
        for pos, (seq, data, leaf, sig) in enumerate(rows.range(start, rows.size), start):
            reason = (f"entry {pos} is missing" if seq != pos
                      else f"entry {pos} does not match its leaf hash" if merkle.leaf_hash(data) != leaf
                      else chain.check(pos, data, leaf, sig, apply=True))
            if reason:
                raise self._refuse(rows, reason)
            frontier.append(leaf)
        if frontier.size != rows.size or frontier.root() != rows.root():
            raise self._refuse(rows, f"its stored tree does not match the entries after entry {start - 1}")

    def _refuse(self, rows: LogRows, reason: str) -> AuditTrustError:
        return AuditTrustError(f"refusing the audit log {rows.path}: {reason}")


class LogRows:
    """What `Trust.open` reads, from the log writer's connection (on its thread)."""

    def __init__(self, path: Path, conn: sqlite3.Connection, origin: str, size: int, signing_public: bytes,
                 fetch: Callable[[list[merkle.NodeKey]], list[bytes]], root: Callable[[], bytes]) -> None:
        self.path, self.conn, self.origin, self.size = path, conn, origin, size
        self.signing_public = signing_public
        """The raw public key the log will sign with (the first key of a new log)."""
        self.fetch, self.root = fetch, root

    def range(self, start: int, end: int) -> Iterator[Row]:
        return iter(self.conn.execute(_ROWS + "seq >= ? AND seq < ? ORDER BY seq", (start, end)))

    def key_entries(self, upto: int) -> Iterator[Row]:
        """Entry 0, then the key rotations before `upto` (found through the action index)."""
        return itertools.chain(self.range(0, 1), self.conn.execute(
            _ROWS + "json_extract(entry, '$.action') = ? AND seq > 0 AND seq < ? ORDER BY seq", (ROTATE_ACTION, upto)))

    def first_key(self) -> bytes | None:
        row = self.conn.execute("SELECT entry FROM audit_entries WHERE seq = 0").fetchone()
        try:
            raw = base64.b64decode(json.loads(row[0])["details"]["public_key"], validate=True)
        except (TypeError, ValueError, KeyError, binascii.Error):
            return None
        return raw if len(raw) == 32 else None


def unrecorded_jobs_reason(missing: list[str]) -> str:
    """What an operator is told about jobs the audit log has no `job.submit` entry for."""
    return (f"{len(missing)} job(s) in jobs.sqlite3 have no job.submit entry in the audit log (first: "
            f"{missing[0]}): audit entries were removed, or jobs were added to the database behind the "
            "daemon's back")
