"""A consistent snapshot of a running daemon's state directory, written into a new directory.

The order makes the parts agree with each other without stopping the daemon:

1. `keys/` (with `audit-anchor.json`): the anchor is copied before the log, so it never vouches
   for more entries than the copied log holds (the daemon writes it only after a checkpoint commits).
2. `jobs.sqlite3`, then `audit.db`, then the other databases, each with SQLite's online backup API
   in one step (one read transaction: a point-in-time copy; WAL writers go on meanwhile). A job's
   `job.submit` entry commits before the job, so every job in the copy has its entry in the log copy.
3. `outputs/`: after the jobs, so every output of a job the copy shows as succeeded is there
   (files are written, renamed, then the job is marked).
4. `keys/keys.json` is read again: a key rotation during the backup fails it (run it again).

Everything goes into a fresh private directory beside the destination and is renamed onto it at
the end (daemon.safefiles.PrivateDir); nothing is followed through a symlink.
"""

from __future__ import annotations

import hashlib
import json
import os
import sqlite3
import stat
import urllib.parse
from collections.abc import Callable
from pathlib import Path
from types import TracebackType
from typing import Any

from daemon.audit.entry import utc_now
from daemon.backup.durable import copy_hashed
from daemon.backup.manifest import FORMAT, MANIFEST, SIGNATURE, STATE, BackupError, audit_state, check_relative, encode
from daemon.safefiles import TEMP_MARK, PrivateDir

DB_SUFFIXES = (".sqlite3", ".db")
DB_ORDER = ("jobs.sqlite3", "audit.db")
"""Databases copied first, in this order; the others follow by name."""
OPEN_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC


def keys_mode(state_dir: Path) -> str:
    """"sealed" or "plain" as `keys/keys.json` says; BackupError when there is no key store."""
    try:
        meta = json.loads((state_dir / "keys" / "keys.json").read_bytes())
    except (OSError, ValueError) as exc:
        raise BackupError(f"cannot read {state_dir / 'keys' / 'keys.json'}: {exc}", "state/keys/keys.json") from None
    return "sealed" if meta.get("sealed") else "plain"


class Snapshot:
    """Copies `state_dir` into the new directory `target`; `take()` then `finish()`.

    Use as a context manager: unless `finish()` committed it, nothing is left behind."""

    def __init__(self, state_dir: Path, target: Path, installation: str, *, include_plain_keys: bool = False,
                 on_file: Callable[[str, int], None] | None = None) -> None:
        self.state_dir = Path(state_dir)
        self.target = Path(os.path.abspath(target))
        self.installation = installation
        self.keys = keys_mode(self.state_dir)
        if self.keys == "plain" and not include_plain_keys:
            raise BackupError(f"the keys in {self.state_dir / 'keys'} are not sealed with a passphrase: a backup "
                              "would hold them in the clear. Seal them ([keys] sealed = true in a new state) or "
                              "pass --include-plain-keys and keep the backup as safe as the keys", "state/keys")
        if self.target.is_symlink() or (self.target.exists() and any(self.target.iterdir())):
            raise BackupError(f"{self.target} exists and is not an empty directory: back up into a new or "
                              "empty directory", str(self.target))
        self.target.parent.mkdir(parents=True, exist_ok=True)
        self.on_file = on_file
        self.files: list[dict[str, Any]] = []
        self.audit: dict[str, Any] = {}
        self._out = PrivateDir(self.target)
        self._out.mkdir(STATE)

    def __enter__(self) -> Snapshot:
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        self._out.__exit__(kind, exc, tb)

    def take(self) -> dict[str, Any]:
        """Copy everything (see the module's docstring for the order); the manifest, unsigned."""
        keys_before = self._digest("keys/keys.json")
        self._copy_tree("keys", missing_ok=False)
        databases, others = self._top_level()
        for name in databases:
            self._copy_db(name)
        if not self.audit:
            raise BackupError(f"{self.state_dir / 'audit.db'} is missing: this is not a daemon's state directory",
                              f"{STATE}/audit.db")
        self._copy_tree("outputs", missing_ok=True)
        if self._digest("keys/keys.json") != keys_before:
            raise BackupError("the keys were rotated during the backup; run it again", "state/keys/keys.json")
        return {"format": FORMAT, "installation": self.installation, "created_at": utc_now(),
                "state_dir": str(self.state_dir), "keys": self.keys, "audit": self.audit,
                "excluded": sorted(others), "files": sorted(self.files, key=lambda f: f["path"])}

    def finish(self, manifest: dict[str, Any], signature_doc: bytes) -> Path:
        """Write the manifest and its signature, and rename the backup onto `target`."""
        self._out.write(MANIFEST, encode(manifest))
        self._out.write(SIGNATURE, signature_doc)
        try:
            return self._out.commit()
        except FileExistsError as exc:
            raise BackupError(str(exc), str(self.target)) from None

    def _digest(self, rel: str) -> str:
        return hashlib.sha256((self.state_dir / rel).read_bytes()).hexdigest()

    def _top_level(self) -> tuple[list[str], list[str]]:
        """(databases in copy order, names left out) directly in the state directory."""
        databases, others = [], []
        for entry in os.scandir(self.state_dir):
            if entry.name in ("keys", "outputs"):
                continue
            if entry.name.endswith(DB_SUFFIXES) and entry.is_file(follow_symlinks=False):
                databases.append(entry.name)
            elif not entry.name.endswith(("-wal", "-shm", "-journal")):
                others.append(entry.name + ("/" if entry.is_dir(follow_symlinks=False) else ""))
        rank = {name: i for i, name in enumerate(DB_ORDER)}
        return sorted(databases, key=lambda n: (rank.get(n, len(rank)), n)), others

    def _record(self, rel: str, size: int, digest: str) -> None:
        self.files.append({"path": check_relative(f"{STATE}/{rel}"), "size": size, "sha256": digest})
        if self.on_file is not None:
            self.on_file(rel, size)

    def _copy_tree(self, top: str, *, missing_ok: bool) -> None:
        """Every regular file under `top`, directories first; a file that vanished meanwhile is
        skipped when `missing_ok` (an interrupted attempt's outputs are removed by the daemon)."""
        root = self.state_dir / top
        if not root.is_dir():
            if missing_ok:
                return
            raise BackupError(f"{root} is missing", f"{STATE}/{top}")
        self._out.mkdir(f"{STATE}/{top}")
        for dirpath, dirnames, filenames in os.walk(root):
            rel_dir = os.path.relpath(dirpath, self.state_dir)
            for name in sorted(dirnames):
                if os.path.islink(os.path.join(dirpath, name)):
                    raise BackupError(f"{os.path.join(dirpath, name)} is a symbolic link; the state directory "
                                      "should hold none", f"{STATE}/{rel_dir}/{name}")
                self._out.mkdir(f"{STATE}/{rel_dir}/{name}")
            for name in sorted(filenames):
                if TEMP_MARK not in name:
                    self._copy_file(f"{rel_dir}/{name}", missing_ok)

    def _copy_file(self, rel: str, missing_ok: bool) -> None:
        try:
            fd = os.open(self.state_dir / rel, OPEN_FLAGS)
        except FileNotFoundError:
            if missing_ok:
                return
            raise
        except OSError as exc:
            raise BackupError(f"cannot read {self.state_dir / rel}: {exc.strerror}", f"{STATE}/{rel}") from None
        with os.fdopen(fd, "rb") as src:
            if not stat.S_ISREG(os.fstat(fd).st_mode):
                raise BackupError(f"{self.state_dir / rel} is not a regular file", f"{STATE}/{rel}")
            with self._out.open(f"{STATE}/{rel}") as dst:
                size, digest = copy_hashed(src, dst)
        self._record(rel, size, digest)

    def _copy_db(self, name: str) -> None:
        """One point-in-time copy with the online backup API, stored in rollback-journal mode (a
        single self-contained file; the daemon turns WAL back on when it opens it)."""
        source = self.state_dir / name
        self._out.write(f"{STATE}/{name}", b"")  # created here, 0600, O_EXCL; SQLite fills it
        dest = f"/proc/self/fd/{self._out.fd}/{STATE}/{name}"
        src = sqlite3.connect(f"file:{urllib.parse.quote(str(source))}?mode=ro", uri=True)
        try:
            dst = sqlite3.connect(dest)
            try:
                dst.execute("PRAGMA synchronous=OFF")  # fsynced once it is whole, below
                src.backup(dst)
                dst.execute("PRAGMA journal_mode=DELETE")
                if name == "audit.db":
                    size, root = audit_state(dst)
                    self.audit = {"size": size, "root": root}
            finally:
                dst.close()
        except sqlite3.Error as exc:
            raise BackupError(f"cannot back up {source}: {exc}", f"{STATE}/{name}") from None
        finally:
            src.close()
        with open(dest, "rb") as copy:
            digest = hashlib.file_digest(copy, "sha256").hexdigest()
            os.fsync(copy.fileno())
            self._record(name, os.fstat(copy.fileno()).st_size, digest)
