"""The backup manifest and its signature (docs/operations.md, "Backup and restore").

    DIR/backup.json   {"format": "sai-backup/1", "installation", "created_at", "state_dir",
                       "keys": "sealed" | "plain", "audit": {"size", "root"}, "excluded": [...],
                       "files": [{"path": "state/...", "size", "sha256"}, ...]}
    DIR/backup.sig    {"format", "key_id", "manifest_sha256", "signature"}: base64 Ed25519 signature
                      by the installation's signing key (made in the daemon, `backup.sign`) over
                      `signed_message(manifest_sha256, audit size, audit root)`
    DIR/state/...     the files, laid out as in the state directory

The signed message starts with its own first line, so it can never be mistaken for an output
manifest (JSON), a checkpoint note (its origin line) or an audit leaf (32 bytes).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import re
import sqlite3
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from daemon.audit import merkle
from daemon.crypto import UnknownKeyError
from daemon.crypto.keys import check_kid, signing_kid_of

FORMAT = "sai-backup/1"
MANIFEST = "backup.json"
SIGNATURE = "backup.sig"
STATE = "state"
MESSAGE_HEAD = b"secure-ai-studio backup v1\n"
HEX64 = re.compile(r"^[0-9a-f]{64}$")
SAFE_PART = re.compile(r"^[A-Za-z0-9._-]{1,200}$")


class BackupError(Exception):
    """A backup that cannot be taken, or one that must not be restored; `path` names the file."""

    def __init__(self, message: str, path: str | None = None) -> None:
        super().__init__(message)
        self.path = path


def signed_message(manifest_sha256: str, audit_size: int, audit_root: str) -> bytes:
    """What the daemon signs for a backup: the manifest's hash and the audit state it holds."""
    return MESSAGE_HEAD + f"manifest {manifest_sha256}\naudit {audit_size} {audit_root}\n".encode()


def encode(manifest: dict[str, Any]) -> bytes:
    return json.dumps(manifest, indent=1, sort_keys=True).encode() + b"\n"


def audit_state(conn: sqlite3.Connection) -> tuple[int, str]:
    """(entries, Merkle root as hex) of the audit log open on `conn`, from its stored tree."""
    last = conn.execute("SELECT max(seq) FROM audit_entries").fetchone()[0]
    size = 0 if last is None else last + 1

    def node(key: merkle.NodeKey) -> bytes:
        level, idx = key
        row = (conn.execute("SELECT leaf_hash FROM audit_entries WHERE seq = ?", (idx,)) if level == 0 else
               conn.execute("SELECT hash FROM audit_nodes WHERE level = ? AND idx = ?", (level, idx))).fetchone()
        if row is None:
            raise BackupError(f"the audit tree is missing node {key}; run `sai audit verify --deep`", "audit.db")
        return bytes(row[0])

    return size, merkle.root(size, node).hex()


def check_relative(path: str) -> str:
    """A manifest path: `state/` then safe name components; never absolute, never `..`."""
    parts = path.split("/")
    if parts[0] != STATE or len(parts) < 2 or not all(SAFE_PART.match(p) and p not in (".", "..") for p in parts):
        raise BackupError(f"the manifest names the path {path!r}, which is not a file under {STATE}/", path)
    return path


def parse(data: bytes) -> dict[str, Any]:
    """The manifest in `data`, its shape checked (sizes, hashes and paths; not yet the signature)."""
    try:
        manifest = json.loads(data)
        if manifest.get("format") != FORMAT:
            raise ValueError(f"format is {manifest.get('format')!r}, not {FORMAT!r}")
        audit = manifest["audit"]
        if not isinstance(audit["size"], int) or not HEX64.match(audit["root"]):
            raise ValueError("audit must have an integer size and a hex root")
        files = manifest["files"]
        for entry in files:
            check_relative(entry["path"])
            if not isinstance(entry["size"], int) or entry["size"] < 0 or not HEX64.match(entry["sha256"]):
                raise ValueError(f"the entry for {entry['path']} needs a size and a hex sha256")
        if len({e["path"] for e in files}) != len(files):
            raise ValueError("a file is listed twice")
    except BackupError:
        raise
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        raise BackupError(f"{MANIFEST} cannot be read ({exc})", MANIFEST) from None
    return manifest


def sign_document(manifest_sha256: str, key_id: str, signature: bytes) -> bytes:
    return json.dumps({"format": FORMAT, "key_id": key_id, "manifest_sha256": manifest_sha256,
                       "signature": base64.b64encode(signature).decode()}, indent=1, sort_keys=True).encode() + b"\n"


def load_public_key(data: bytes, where: str) -> Ed25519PublicKey:
    try:
        key = serialization.load_pem_public_key(data)
    except ValueError as exc:
        raise BackupError(f"{where} is not a public key ({exc})", where) from None
    if not isinstance(key, Ed25519PublicKey):
        raise BackupError(f"{where} is not an Ed25519 public key", where)
    return key


def check_signature(backup_dir: Path, manifest_data: bytes, manifest: dict[str, Any],
                    pinned: Ed25519PublicKey | None) -> str:
    """The signing key id, once `backup.sig` is a valid signature over this manifest by the key the
    backup holds (`state/keys/signing-<kid>.pub.pem`) and, when given, by `pinned` too."""
    try:
        doc = json.loads((backup_dir / SIGNATURE).read_bytes())
        kid = check_kid(doc["key_id"])
        signature = base64.b64decode(doc["signature"], validate=True)
    except FileNotFoundError:
        raise BackupError(f"{SIGNATURE} is missing: the backup is incomplete", SIGNATURE) from None
    except (OSError, ValueError, KeyError, TypeError, binascii.Error, UnknownKeyError) as exc:
        raise BackupError(f"{SIGNATURE} cannot be read ({exc})", SIGNATURE) from None
    digest = hashlib.sha256(manifest_data).hexdigest()
    if doc.get("manifest_sha256") != digest:
        raise BackupError(f"{MANIFEST} was changed after it was signed (its SHA-256 is {digest}, {SIGNATURE} "
                          f"names {doc.get('manifest_sha256')})", MANIFEST)
    key_file = f"{STATE}/keys/signing-{kid}.pub.pem"
    try:
        held = load_public_key((backup_dir / key_file).read_bytes(), key_file)
    except FileNotFoundError:
        raise BackupError(f"{key_file}, the key {SIGNATURE} names, is not in the backup", key_file) from None
    keys = [("the backup's " + key_file, held)]
    if pinned is not None:
        if signing_kid_of(pinned) != kid:
            raise BackupError(f"the backup is signed by {kid}, not by the pinned key {signing_kid_of(pinned)} "
                              f"(--key)", SIGNATURE)
        keys.append(("the pinned key (--key)", pinned))
    message = signed_message(digest, manifest["audit"]["size"], manifest["audit"]["root"])
    for name, key in keys:
        try:
            key.verify(signature, message)
        except InvalidSignature:
            raise BackupError(f"{SIGNATURE} is not a valid signature of {MANIFEST} by {name}", SIGNATURE) from None
    return kid
