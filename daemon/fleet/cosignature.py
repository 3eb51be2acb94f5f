"""C2SP tlog-cosignature (cosignature/v1, Ed25519): a witness's signature line on a checkpoint.

    — <witness name> base64(key ID (4 bytes) || timestamp (u64, big-endian) || Ed25519 signature (64 bytes))

The key ID is SHA-256(<name> || 0x0A || 0x04 || 32-byte public key)[:4]; the signed message is
"cosignature/v1\\ntime <timestamp>\\n" followed by the checkpoint's note body (its lines up to and
including the newline before the blank line, without any signature line). A v1 cosignature says:
as of that time, the largest consistent tree the witness has seen of that origin has that root.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import struct

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from daemon.audit.checkpoint import SIG_PREFIX
from daemon.crypto import ed25519

COSIGNATURE_V1 = b"\x04"
HEADER = "cosignature/v1\n"


class CosignatureError(ValueError):
    """A cosignature line that is malformed, from another key, or whose signature does not verify."""


def key_id(name: str, public_raw: bytes) -> bytes:
    return hashlib.sha256(name.encode("utf-8") + b"\n" + COSIGNATURE_V1 + public_raw).digest()[:4]


def message(body: str, timestamp: int) -> bytes:
    return f"{HEADER}time {timestamp}\n{body}".encode()


def cosign(name: str, key: Ed25519PrivateKey, body: str, timestamp: int) -> str:
    """The signature line (without its newline) of witness `name` over the checkpoint `body`."""
    if not name or any(c.isspace() or c == "+" for c in name):
        raise ValueError(f"witness name {name!r} may not be empty or hold spaces or '+'")
    if not 0 <= timestamp < 2**63:
        raise ValueError("a cosignature timestamp is a POSIX time between 0 and 2^63 - 1")
    public_raw = key.public_key().public_bytes_raw()
    signature = key.sign(message(body, timestamp))
    blob = key_id(name, public_raw) + struct.pack(">Q", timestamp) + signature
    return f"{SIG_PREFIX}{name} {base64.b64encode(blob).decode()}"


def verify(line: str, name: str, public_raw: bytes, body: str) -> int:
    """Check `line` is witness `name`'s cosignature over `body` with key `public_raw`; its timestamp."""
    if not line.startswith(SIG_PREFIX):
        raise CosignatureError(f"not a signature line: {line!r}")
    parts = line[len(SIG_PREFIX):].split(" ")
    if len(parts) != 2 or parts[0] != name:
        raise CosignatureError(f"the cosignature is not by witness {name!r}")
    try:
        blob = base64.b64decode(parts[1], validate=True)
    except (binascii.Error, ValueError):
        raise CosignatureError("the cosignature is not base64") from None
    if len(blob) != 4 + 8 + 64:
        raise CosignatureError(f"a cosignature/v1 blob is 76 bytes, this one {len(blob)}")
    if blob[:4] != key_id(name, public_raw):
        raise CosignatureError(f"the cosignature's key ID is not that of witness {name!r}'s key")
    (timestamp,) = struct.unpack(">Q", blob[4:12])
    if timestamp >= 2**63 or not ed25519.verify(public_raw, blob[12:], message(body, timestamp)):
        raise CosignatureError(f"witness {name!r}'s cosignature does not verify")
    return int(timestamp)
