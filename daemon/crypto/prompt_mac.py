"""Keyed digests of prompts for the audit log.

A plain SHA-256 of a prompt lets anyone who can read the log confirm a guessed prompt. The audit
log records HMAC-SHA256 instead, under a key derived (HKDF-SHA256) from a key-encryption key of
the key store: the key never leaves the daemon, and an entry names the KEK it was derived from
(`prompt_mac_kid`), so an admin holding the key store can still check a prompt after a rotation.
"""

from __future__ import annotations

import hashlib
import hmac
from typing import Protocol

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

MAC_INFO = b"sai-prompt-mac-v1"


class KekSource(Protocol):
    @property
    def current_kek_id(self) -> str: ...

    def kek(self, kid: str) -> bytes: ...


def derive_mac_key(kek: bytes) -> bytes:
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=MAC_INFO).derive(kek)


class PromptMac:
    """`details(prompt, negative_prompt)`: the audit fields that stand for a job's prompts."""

    def __init__(self, keys: KekSource) -> None:
        self._keys = keys
        self._derived: dict[str, bytes] = {}

    def _key(self, kid: str) -> bytes:
        key = self._derived.get(kid)
        if key is None:
            key = self._derived[kid] = derive_mac_key(self._keys.kek(kid))
        return key

    def digest(self, text: str, kid: str | None = None) -> str:
        key = self._key(kid or self._keys.current_kek_id)
        return hmac.new(key, text.encode("utf-8"), hashlib.sha256).hexdigest()

    def details(self, prompt: str, negative_prompt: str) -> dict[str, str]:
        kid = self._keys.current_kek_id
        return {"prompt_hmac": self.digest(prompt, kid), "negative_prompt_hmac": self.digest(negative_prompt, kid),
                "prompt_mac_kid": kid}
