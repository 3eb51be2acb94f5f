"""Check a backup and put it back into a new state directory.

Nothing is written unless the whole backup checks out: the signature over the manifest (by the key
the backup holds, and by the operator's pinned key when given), the exact set of files (none
missing, none extra, no links), and each file's size and SHA-256, computed on the bytes as they are
copied, so what was checked is what lands. The copy goes into a fresh private directory renamed
onto the new state directory at the end: directories 0700, files 0600.
"""

from __future__ import annotations

import os
import sqlite3
import stat
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from daemon.audit.anchor import FILE_NAME as ANCHOR_FILE
from daemon.audit.anchor import Anchor, AuditTrustError
from daemon.backup.durable import copy_hashed
from daemon.backup.manifest import MANIFEST, SIGNATURE, STATE, BackupError, audit_state, check_signature, parse
from daemon.safefiles import PrivateDir

OPEN_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC


def listing(backup_dir: Path) -> set[str]:
    """Every file in the backup as a manifest path; BackupError naming anything that is not a
    regular file or directory, or that does not belong at the top."""
    top = {entry.name: entry for entry in os.scandir(backup_dir)}
    for name, entry in top.items():
        if name not in (MANIFEST, SIGNATURE, STATE) or entry.is_symlink():
            raise BackupError(f"{name} does not belong in a backup (only {MANIFEST}, {SIGNATURE} and {STATE}/)", name)
    found: set[str] = set()
    for dirpath, dirnames, filenames in os.walk(backup_dir / STATE):
        rel_dir = os.path.relpath(dirpath, backup_dir)
        for name in [*dirnames, *filenames]:
            mode = os.lstat(os.path.join(dirpath, name)).st_mode
            rel = f"{rel_dir}/{name}"
            if stat.S_ISREG(mode):
                found.add(rel)
            elif not stat.S_ISDIR(mode):
                raise BackupError(f"{rel} is not a regular file (a link or a device): the backup was changed", rel)
    return found


def verify_listing(manifest: dict[str, Any], found: set[str]) -> None:
    listed = {entry["path"] for entry in manifest["files"]}
    missing, extra = sorted(listed - found), sorted(found - listed)
    if missing:
        raise BackupError(f"{missing[0]} is listed in {MANIFEST} but missing from the backup"
                          + (f" (and {len(missing) - 1} more)" if len(missing) > 1 else "")
                          + ": the backup is incomplete", missing[0])
    if extra:
        raise BackupError(f"{extra[0]} is in the backup but not in its signed {MANIFEST}: the backup was changed",
                          extra[0])


def check(backup_dir: Path, pinned: Ed25519PublicKey | None = None) -> tuple[dict[str, Any], str]:
    """The manifest and the signing key id, once the signature and the set of files check out
    (the files' contents are checked as they are copied)."""
    try:
        data = (backup_dir / MANIFEST).read_bytes()
    except FileNotFoundError:
        raise BackupError(f"{MANIFEST} is missing from {backup_dir}: not a backup, or an incomplete one",
                          MANIFEST) from None
    manifest = parse(data)
    kid = check_signature(backup_dir, data, manifest, pinned)
    verify_listing(manifest, listing(backup_dir))
    return manifest, kid


class Restore:
    """Checks `backup_dir` and restores it into `new_state` (absent or empty); see the module."""

    def __init__(self, backup_dir: Path, new_state: Path, pinned: Ed25519PublicKey | None = None) -> None:
        self.backup_dir = Path(backup_dir)
        self.new_state = Path(os.path.abspath(new_state))
        self.pinned = pinned

    def run(self) -> dict[str, Any]:
        manifest, kid = check(self.backup_dir, self.pinned)
        if self.new_state.is_symlink() or (self.new_state.exists() and any(self.new_state.iterdir())):
            raise BackupError(f"{self.new_state} exists and is not an empty directory: restore into a new or "
                              "empty directory", str(self.new_state))
        self.new_state.parent.mkdir(parents=True, exist_ok=True)
        total = 0
        with PrivateDir(self.new_state) as out:
            made: set[str] = {""}
            for entry in manifest["files"]:
                rel = entry["path"][len(STATE) + 1:]
                parts = rel.split("/")
                for depth in range(1, len(parts)):
                    sub = "/".join(parts[:depth])
                    if sub not in made:
                        out.mkdir(sub)
                        made.add(sub)
                total += self._copy(entry, out, rel)
            self._check_audit(manifest, out)
            out.commit()
        return {"state_dir": str(self.new_state), "files": len(manifest["files"]), "bytes": total, "key_id": kid,
                "installation": manifest.get("installation"), "created_at": manifest.get("created_at"),
                "audit": manifest["audit"], "keys": manifest.get("keys")}

    def _copy(self, entry: dict[str, Any], out: PrivateDir, rel: str) -> int:
        path = entry["path"]
        try:
            fd = os.open(self.backup_dir / path, OPEN_FLAGS)
        except OSError as exc:
            raise BackupError(f"cannot read {path}: {exc.strerror}", path) from None
        with os.fdopen(fd, "rb") as src, out.open(rel) as dst:
            size, digest = copy_hashed(src, dst)
        if size != entry["size"] or digest != entry["sha256"]:
            raise BackupError(f"{path} was changed: it is {size} bytes with SHA-256 {digest}, the signed "
                              f"manifest says {entry['size']} bytes with SHA-256 {entry['sha256']}", path)
        return size

    def _check_audit(self, manifest: dict[str, Any], out: PrivateDir) -> None:
        """The restored log holds the signed audit state, and the anchor vouches for no more of it."""
        where = f"/proc/self/fd/{out.fd}"
        try:
            conn = sqlite3.connect(f"file:{where}/audit.db?mode=ro", uri=True)
            try:
                size, root = audit_state(conn)
            finally:
                conn.close()
        except sqlite3.Error as exc:
            raise BackupError(f"{STATE}/audit.db cannot be read as an audit log ({exc})", f"{STATE}/audit.db") from None
        if (size, root) != (manifest["audit"]["size"], manifest["audit"]["root"]):
            raise BackupError(f"{STATE}/audit.db holds {size} entries with root {root}, not the signed audit state",
                              f"{STATE}/audit.db")
        anchor_path = Path(where) / "keys" / ANCHOR_FILE
        if anchor_path.exists():
            try:
                anchor = Anchor.from_json(anchor_path.read_bytes(), Path(f"{STATE}/keys/{ANCHOR_FILE}"))
            except AuditTrustError as exc:
                raise BackupError(str(exc), f"{STATE}/keys/{ANCHOR_FILE}") from None
            if anchor.size > size:
                raise BackupError(f"{STATE}/keys/{ANCHOR_FILE} vouches for {anchor.size} audit entries but the "
                                  f"backup's log holds {size}: a daemon would refuse it", f"{STATE}/keys/{ANCHOR_FILE}")
