"""Ed25519 on the audit chain's hot paths, through libsodium (PyNaCl).

Keys are made, stored and loaded with `cryptography` (daemon/crypto/keys.py). Signing every audit
entry and verifying a million of them go through libsodium instead: on the 2-core machine the
benchmarks run on it signed 1.5 to 1.8 times and verified 1.4 to 2 times as fast as OpenSSL through
`cryptography` (bench/audit.py prints both verify rates), and PyNaCl's calls release the GIL, so the
audit writer thread signs while the event loop goes on serving. Ed25519 signatures are
deterministic (RFC 8032), so both libraries give the same bytes.
"""

from __future__ import annotations

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from nacl.bindings import crypto_sign, crypto_sign_open, crypto_sign_seed_keypair
from nacl.exceptions import BadSignatureError

SIGNATURE_LEN = 64
PUBLIC_KEY_LEN = 32


class Signer:
    """Signs with one private key; the key stays in this object, in this process."""

    __slots__ = ("_secret", "public_raw")

    def __init__(self, key: Ed25519PrivateKey) -> None:
        self.public_raw, self._secret = crypto_sign_seed_keypair(key.private_bytes_raw())

    def sign(self, message: bytes) -> bytes:
        return crypto_sign(message, self._secret)[:SIGNATURE_LEN]

    def __repr__(self) -> str:
        return f"Signer(public={self.public_raw.hex()[:16]}…)"


def verify(public_raw: bytes, signature: bytes, message: bytes) -> bool:
    """True when `signature` is a valid Ed25519 signature of `message` by `public_raw`."""
    if len(signature) != SIGNATURE_LEN or len(public_raw) != PUBLIC_KEY_LEN:
        return False
    try:
        crypto_sign_open(signature + message, public_raw)
    except (BadSignatureError, ValueError):
        return False
    return True
