"""Signed checkpoints: a C2SP tlog-checkpoint body in a C2SP signed note, signed with Ed25519.

    <origin>\\n
    <tree size, decimal>\\n
    <base64 root hash>\\n
    \\n
    — <key name> <base64(key hash (4 bytes) || Ed25519 signature (64 bytes))>\\n

The signature covers the body (the three lines, final newline included). The key hash is the
first 4 bytes of SHA-256(key name || 0x0A || 0x01 || 32-byte public key). The key name is the
log's origin, so it may hold no whitespace and no '+'.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import re
from collections.abc import Iterable
from dataclasses import dataclass

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from daemon.crypto import ed25519

SIG_PREFIX = "\u2014 "
ED25519 = b"\x01"
_SIZE_RE = re.compile(r"^(0|[1-9][0-9]*)$")


class CheckpointError(ValueError):
    """A checkpoint that cannot be parsed, or whose signature does not verify."""


def check_origin(origin: str) -> str:
    """An origin is also the signing key's name: non-empty, no whitespace, no '+', printable."""
    if not isinstance(origin, str) or not origin:
        raise ValueError("the audit origin (installation name) must be a non-empty string")
    if any(c.isspace() or c == "+" or ord(c) < 0x20 or ord(c) == 0x7F for c in origin):
        raise ValueError(f"audit origin {origin!r} may not contain spaces, control characters or '+'")
    return origin


def key_hash(name: str, public_raw: bytes) -> bytes:
    return hashlib.sha256(name.encode("utf-8") + b"\n" + ED25519 + public_raw).digest()[:4]


def body(origin: str, size: int, root: bytes) -> str:
    return f"{origin}\n{size}\n{base64.b64encode(root).decode()}\n"


def sign(origin: str, size: int, root: bytes, key: Ed25519PrivateKey) -> str:
    """The signed note text of a checkpoint of `size` entries with tree hash `root`."""
    check_origin(origin)
    text = body(origin, size, root)
    public_raw = key.public_key().public_bytes_raw()
    signature = key.sign(text.encode("utf-8"))
    blob = base64.b64encode(key_hash(origin, public_raw) + signature).decode()
    return f"{text}\n{SIG_PREFIX}{origin} {blob}\n"


@dataclass(frozen=True)
class Checkpoint:
    origin: str
    size: int
    root: bytes
    text: str
    """The signed body."""
    signatures: tuple[tuple[str, bytes, bytes], ...]
    """(key name, key hash, signature) per signature line."""


def _b64(text: str, what: str) -> bytes:
    try:
        raw = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise CheckpointError(f"{what} is not base64") from None
    if base64.b64encode(raw).decode() != text:
        raise CheckpointError(f"{what} is not canonical base64")
    return raw


def parse(note: str) -> Checkpoint:
    """Parse a signed checkpoint note; CheckpointError says what is malformed."""
    if not isinstance(note, str) or not note.endswith("\n"):
        raise CheckpointError("a checkpoint note must end with a newline")
    if any(ord(c) < 0x20 and c != "\n" for c in note):
        raise CheckpointError("a checkpoint note may not contain control characters")
    split = note.rfind("\n\n")
    if split < 0:
        raise CheckpointError("a checkpoint note needs a blank line before its signatures")
    text, sig_block = note[: split + 1], note[split + 2:]
    lines = text[:-1].split("\n")
    if len(lines) < 3:
        raise CheckpointError("a checkpoint needs an origin, a tree size and a root hash line")
    origin, size_text, root_text = lines[0], lines[1], lines[2]
    if not origin:
        raise CheckpointError("the checkpoint origin line is empty")
    if not _SIZE_RE.match(size_text):
        raise CheckpointError(f"checkpoint tree size {size_text!r} is not a decimal number")
    root = _b64(root_text, "the checkpoint root hash")
    if len(root) != 32:
        raise CheckpointError("the checkpoint root hash is not 32 bytes")
    signatures = []
    for line in sig_block[:-1].split("\n") if sig_block else []:
        if not line.startswith(SIG_PREFIX):
            raise CheckpointError(f"malformed signature line {line!r}")
        parts = line[len(SIG_PREFIX):].split(" ")
        if len(parts) != 2 or not parts[0]:
            raise CheckpointError(f"malformed signature line {line!r}")
        blob = _b64(parts[1], "a checkpoint signature")
        if len(blob) < 5:
            raise CheckpointError("a checkpoint signature is too short")
        signatures.append((parts[0], blob[:4], blob[4:]))
    if not signatures:
        raise CheckpointError("the checkpoint has no signature line")
    return Checkpoint(origin, int(size_text), root, text, tuple(signatures))


def verify(note: str, keys: Iterable[bytes], name: str | None = None) -> tuple[Checkpoint, bytes]:
    """Parse `note` and check it is signed by one of `keys` (raw Ed25519 public keys) under the
    key name `name` (default: the checkpoint's origin). Returns the checkpoint and the key that
    verified it; CheckpointError otherwise. Lines from unknown keys are ignored, as the spec says."""
    cp = parse(note)
    name = cp.origin if name is None else name
    by_hash = {key_hash(name, raw): raw for raw in keys}
    message = cp.text.encode("utf-8")
    known = False
    for sig_name, hint, signature in cp.signatures:
        raw = by_hash.get(hint)
        if sig_name != name or raw is None:
            continue
        known = True
        if ed25519.verify(raw, signature, message):
            return cp, raw
    if known:
        raise CheckpointError(f"the checkpoint signature for size {cp.size} does not verify")
    raise CheckpointError(f"the checkpoint for size {cp.size} is not signed by a known key named {name}")
