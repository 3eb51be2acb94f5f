"""The one id of an Ed25519 signing key: `ed25519-` + hex of the first 8 bytes of SHA-256 of the
raw 32-byte public key (docs/formats.md, "Key ids").

The key store, manifests, backups and the audit log all name the key this way. Audit logs
written before this form was shared name it by the 16 hex digits alone; their entries are signed
as written and never change, so ids are compared through `canonical_key_id`, which reads both.
"""

from __future__ import annotations

import hashlib
import re

PREFIX = "ed25519-"
_BARE = re.compile(r"^[0-9a-f]{16}$")


def signing_key_id(public_key_raw: bytes) -> str:
    """The id of the raw 32-byte Ed25519 public key."""
    return PREFIX + hashlib.sha256(public_key_raw).hexdigest()[:16]


def canonical_key_id(kid: str) -> str:
    """`kid` in the one form: an old audit log's bare 16 hex digits gain the prefix; any other
    text is returned as it is (so a wrong id stays wrong, and messages quote it)."""
    return PREFIX + kid if _BARE.match(kid) else kid


def same_key_id(a: object, b: object) -> bool:
    """Whether two ids name the same key, in either form; anything but two strings is not."""
    return isinstance(a, str) and isinstance(b, str) and canonical_key_id(a) == canonical_key_id(b)
