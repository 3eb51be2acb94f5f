"""Sealing a key store with a passphrase: scrypt once at open, then AES-256-GCM per key file.

`keys.json` holds the parameters (`seal`: kdf, salt, n, r, p, and `check`, the sealing of the
empty string, which tells a wrong passphrase from a damaged file; docs/formats.md "Sealed mode").
The scrypt cost is bounded by daemon.crypto.limits.
"""

from __future__ import annotations

import base64
import logging
import secrets
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.scrypt import Scrypt

from daemon.crypto import KeyStoreError, WrongPassphraseError
from daemon.crypto.limits import MIN_LOG2_N, check_scrypt_log2_n

SEAL_CHECK = b"sai-seal-check-v1"

log = logging.getLogger("sai.keys")


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _unb64(text: str) -> bytes:
    return base64.b64decode(text.encode("ascii"), validate=True)


class Sealer:
    """AES-256-GCM under a key derived once from the passphrase with scrypt."""

    def __init__(self, key: bytes) -> None:
        self._aead = AESGCM(key)

    @staticmethod
    def derive(passphrase: str, salt: bytes, n: int, r: int, p: int) -> Sealer:
        kdf = Scrypt(salt=salt, length=32, n=n, r=r, p=p)
        return Sealer(kdf.derive(passphrase.encode("utf-8")))

    @classmethod
    def create(cls, passphrase: str, log2_n: int) -> tuple[Sealer, dict[str, Any]]:
        """A new sealer and the `seal` parameters that reopen it."""
        if not passphrase:
            raise WrongPassphraseError("an empty passphrase cannot seal keys")
        reason = check_scrypt_log2_n(log2_n)
        if reason:
            raise KeyStoreError(f"keys.scrypt_log2_n = {log2_n!r}: {reason}", field="scrypt_log2_n")
        salt, n, r, p = secrets.token_bytes(16), 1 << log2_n, 8, 1
        sealer = cls.derive(passphrase, salt, n, r, p)
        return sealer, {"kdf": "scrypt", "salt": _b64(salt), "n": n, "r": r, "p": p,
                        "check": _b64(sealer.seal(b"", SEAL_CHECK))}

    @classmethod
    def reopen(cls, passphrase: str, seal: dict[str, Any], keys_dir: Path) -> Sealer:
        """The sealer `seal` describes; WrongPassphraseError when `passphrase` is not the one."""
        sealer = cls.derive(passphrase, _unb64(seal["salt"]), seal["n"], seal["r"], seal["p"])
        try:
            sealer.unseal(_unb64(seal["check"]), SEAL_CHECK)
        except (InvalidTag, ValueError):
            raise WrongPassphraseError(f"wrong passphrase for the sealed keys in {keys_dir}") from None
        if seal["n"] < 1 << MIN_LOG2_N:
            log.warning("the keys in %s are sealed with scrypt N = %d, below 2^%d: a copy of keys.json is cheap to "
                        "guess the passphrase from; create a new sealed store (sai backup first) to raise it",
                        keys_dir, seal["n"], MIN_LOG2_N)
        return sealer

    def seal(self, data: bytes, label: bytes) -> bytes:
        nonce = secrets.token_bytes(12)
        return nonce + self._aead.encrypt(nonce, data, label)

    def unseal(self, blob: bytes, label: bytes) -> bytes:
        return self._aead.decrypt(blob[:12], blob[12:], label)
