"""Export of the audit log to a directory that can be verified with nothing else.

    DIR/manifest.json             format, origin, entry count, time of export, key ids
    DIR/entries.jsonl             one entry per line, in sequence order: the entry's canonical
                                  JSON object with two more members, "leaf_hash" and "signature" (hex)
    DIR/checkpoints/<size>.txt    every signed checkpoint note, named by its tree size (20 digits)
    DIR/keys/<key id>.pem         every signing key the log used (SubjectPublicKeyInfo PEM)

The entry bytes are the canonical JSON of a line's object without "leaf_hash" and "signature"
(sorted keys, no whitespace, UTF-8); docs/formats.md has the whole format.
"""

from __future__ import annotations

import errno
import io
import json
import os
import re
import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from daemon.audit.entry import Row, canonical_entry, key_id, utc_now
from daemon.crypto.keyid import canonical_key_id
from daemon.safefiles import PrivateDir

FORMAT = "secure-ai-studio/audit-export"
VERSION = 1
EXPORT_ROOT = "/var/backups/secure-ai-studio"
"""Where the shipped unit lets the daemon write exports (config/secure-ai-studio.service)."""
_CP_NAME = re.compile(r"^([0-9]{1,20})\.txt$")
_SUFFIX_RE = re.compile(rb',"leaf_hash":"([0-9a-f]{64})","signature":"([0-9a-f]{128})"}\n?$')


class ExportError(Exception):
    """The directory is not an export this version can read."""


def write_export(db_path: Path, directory: Path) -> dict[str, Any]:
    """Write the export from one read snapshot of the database; returns the manifest.

    Everything is written in a fresh private directory beside `directory` and renamed onto it at
    the end (daemon.safefiles.PrivateDir): symlinks another user plants in `directory` (or an empty
    `directory` they made) during the export are never followed."""
    directory = Path(directory)
    if directory.exists() and any(directory.iterdir()):
        raise FileExistsError(f"{directory} is not empty: export into a new or empty directory")
    try:
        directory.parent.mkdir(parents=True, exist_ok=True)
        with PrivateDir(directory) as out:
            out.mkdir("checkpoints")
            out.mkdir("keys")
            manifest = _write_contents(db_path, out)
            out.write("manifest.json", (json.dumps(manifest, indent=2) + "\n").encode())
            out.commit()
    except OSError as exc:
        if exc.errno not in (errno.EROFS, errno.EACCES):
            raise
        raise PermissionError(f"the daemon cannot write in {directory.parent} ({exc.strerror}); under the shipped "
                              f"systemd unit it can write only its state directory and {EXPORT_ROOT} "
                              "(ReadWritePaths=)") from None
    return manifest


def _write_contents(db_path: Path, out: PrivateDir) -> dict[str, Any]:
    conn = sqlite3.connect(f"file:{Path(db_path).resolve()}?mode=ro", uri=True, isolation_level=None)
    try:
        conn.execute("BEGIN")
        origin = conn.execute("SELECT value FROM audit_meta WHERE name = 'origin'").fetchone()[0]
        count = 0
        with out.open("entries.jsonl") as raw, io.TextIOWrapper(raw, encoding="utf-8", newline="\n") as entries:
            for text, leaf, sig in conn.execute(
                    "SELECT entry, leaf_hash, signature FROM audit_entries ORDER BY seq"):
                entries.write(f'{text[:-1]},"leaf_hash":"{leaf.hex()}","signature":"{sig.hex()}"}}\n')
                count += 1
            entries.flush()
            os.fsync(entries.fileno())
        for size, note in conn.execute("SELECT tree_size, note FROM audit_checkpoints ORDER BY tree_size"):
            out.write(f"checkpoints/{size:020d}.txt", note.encode("utf-8"))
        kids = []
        for kid, raw_key in conn.execute("SELECT key_id, public_key FROM audit_keys ORDER BY first_seq"):
            pem = Ed25519PublicKey.from_public_bytes(raw_key).public_bytes(
                serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
            named = canonical_key_id(kid)
            out.write(f"keys/{named}.pem", pem)
            kids.append(named)
        conn.execute("COMMIT")
    finally:
        conn.close()
    return {"format": FORMAT, "version": VERSION, "origin": origin, "entries": count,
            "exported_at": utc_now(), "keys": kids}


def line_entry(line: bytes, seq: int) -> tuple[bytes, bytes, bytes]:
    """(entry bytes, leaf hash, signature) of one export line; ValueError if it cannot be read.

    Lines as written here end with the two extra members, so the entry bytes are the line
    without them; any other layout is parsed and re-canonicalised (the documented rule).
    """
    m = _SUFFIX_RE.search(line)
    if m is not None and line.startswith(b"{"):
        return line[: m.start()] + b"}", bytes.fromhex(m.group(1).decode()), bytes.fromhex(m.group(2).decode())
    try:
        obj = json.loads(line)
        leaf, sig = bytes.fromhex(obj.pop("leaf_hash")), bytes.fromhex(obj.pop("signature"))
        return canonical_entry(obj), leaf, sig
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        raise ValueError(f"entry {seq}: line {seq + 1} of entries.jsonl cannot be read ({exc})") from None


class ExportSource:
    """An export directory as a verification source (see daemon.audit.verify)."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        try:
            manifest = json.loads((directory / "manifest.json").read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise ExportError(f"{directory} has no readable manifest.json: {exc}") from None
        if not isinstance(manifest, dict) or manifest.get("format") != FORMAT or manifest.get("version") != VERSION:
            raise ExportError(f"{directory} is not a {FORMAT} version {VERSION} export")
        self.origin = str(manifest.get("origin", ""))
        declared = manifest.get("entries")
        self.declared_size = declared if isinstance(declared, int) else None
        self.keys: dict[str, bytes] = {}
        for pem in sorted((directory / "keys").glob("*.pem")):
            try:
                key = serialization.load_pem_public_key(pem.read_bytes())
            except ValueError:
                continue
            if isinstance(key, Ed25519PublicKey):
                raw = key.public_bytes_raw()
                self.keys[key_id(raw)] = raw
        self.checkpoints: list[tuple[int, str]] = []
        for path in sorted((directory / "checkpoints").glob("*.txt")):
            m = _CP_NAME.match(path.name)
            if m:
                self.checkpoints.append((int(m.group(1)), path.read_text(encoding="utf-8", errors="replace")))
        self._offsets: list[int] = []
        offset = 0
        try:
            with open(directory / "entries.jsonl", "rb") as f:
                for line in f:
                    self._offsets.append(offset)
                    offset += len(line)
        except OSError as exc:
            raise ExportError(f"{directory} has no readable entries.jsonl: {exc.strerror}") from None
        self.size = len(self._offsets)
        self.row_errors: dict[int, str] = {}

    def rows(self, start: int, end: int) -> Iterator[Row]:
        if start >= end:
            return
        with open(self.directory / "entries.jsonl", "rb") as f:  # its own position: reads interleave
            f.seek(self._offsets[start])
            for seq in range(start, end):
                line = f.readline()
                try:
                    data, leaf, sig = line_entry(line, seq)
                except ValueError as exc:  # reported as this entry's failure: its leaf cannot match
                    self.row_errors[seq] = str(exc)
                    data, leaf, sig = line, b"", b""
                yield seq, data, leaf, sig

    def light_rows(self, start: int, end: int) -> Iterator[tuple[bytes, bytes]]:
        return ((data, leaf) for _, data, leaf, _ in self.rows(start, end))

    def nodes(self, level: int, lo: int, hi: int) -> dict[int, bytes] | None:
        return None

    def close(self) -> None:
        pass
