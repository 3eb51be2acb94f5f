"""A log's key chain, and where its trust starts.

Entry 0 (`audit.init`) announces the first signing key and is signed by it; each
`audit.key_rotate` entry announces the next key and is signed by the key it replaces. On its
own that chain only proves that the log is consistent with itself: whoever rewrites the whole
log with a key of their own makes an equally consistent one. Trust comes from a `Pin`, a key
held outside the log (the key store's anchor, or a key an operator names with `--key`): the
chain must start at it, so every later key is vouched for by a rotation its predecessor signed.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from daemon.audit.entry import INIT_ACTION, ROTATE_ACTION, key_id, parse_entry
from daemon.crypto import ed25519
from daemon.crypto.keyid import canonical_key_id, same_key_id


@dataclass(frozen=True)
class Pin:
    """Where a log's trust starts, kept outside the log."""

    first_key: bytes
    """Raw Ed25519 public key that entry 0 must announce and be signed by."""
    source: str
    """Where the pin comes from, for messages (a file name, `--key PEM`)."""
    known_keys: Mapping[str, bytes] | None = None
    """key id -> raw key: the keys the chain may announce (the key store's). None: the source's own list."""
    checkpoint: str | None = None
    """A signed checkpoint the log must extend (the anchored one), or None."""


Deferred = Callable[[int, bytes, bytes, bytes], None]
"""(seq, raw key, leaf hash, signature): a signature check handed to a pool instead of made here."""


class KeyChain:
    """Walks a log's entries in order and checks each against the key in force."""

    def __init__(self, origin: str, keys: Mapping[str, bytes], pin: Pin | None = None) -> None:
        self.origin = origin
        known = pin.known_keys if pin is not None and pin.known_keys is not None else keys
        self.keys = {canonical_key_id(kid): raw for kid, raw in known.items()}
        """Canonical key id -> raw key (an old log's key table names keys by the bare digits)."""
        self.pin = pin
        self.history: list[tuple[int, str, bytes]] = []
        """(first seq it signs, canonical key id, raw key), in order."""
        self.announced: list[tuple[int, bytes]] = []
        """(seq of the entry announcing it, raw key): which keys may sign a checkpoint of a size."""

    def key_at(self, pos: int) -> tuple[str, bytes] | None:
        found = None
        for first, kid, raw in self.history:
            if first > pos:
                break
            found = (kid, raw)
        return found

    def signers_before(self, size: int) -> list[bytes]:
        """The keys that may sign a checkpoint of `size` entries (announced before entry `size`)."""
        return [raw for seq, raw in self.announced if seq < size]

    def check(self, pos: int, data: bytes, leaf: bytes, sig: bytes, apply: bool,
              defer: Deferred | None = None) -> str | None:
        """Why entry `pos` is wrong, or None. `apply` records the keys entry 0 and rotations
        announce; `defer` takes the signature check elsewhere (the deep path's pool)."""
        try:
            e = parse_entry(data)
        except ValueError as exc:
            return f"entry {pos} is not a valid entry: {exc}"
        if e["seq"] != pos:
            return f"entry at position {pos} says it is entry {e['seq']} (entries were removed, inserted or moved)"
        if pos == 0:
            reason = self._genesis(e, apply)
            if reason:
                return reason
        current = self.key_at(pos)
        if current is None:
            return f"entry {pos}: no signing key is in force"
        kid, raw = current
        if not same_key_id(e["key_id"], kid):
            return f"entry {pos} names signing key {e['key_id']}, but the key in force is {kid}"
        if defer is not None:
            defer(pos, raw, leaf, sig)
        elif not ed25519.verify(raw, sig, leaf):
            return f"entry {pos}: the signature does not verify with key {kid}"
        if e["action"] == ROTATE_ACTION:
            return self._rotation(pos, e, apply)
        return None

    def _public_key(self, text: Any, kid: Any, pos: int) -> bytes | str:
        try:
            raw = base64.b64decode(text, validate=True) if isinstance(text, str) else b""
        except (binascii.Error, ValueError):
            raw = b""
        if len(raw) != 32:
            return f"entry {pos} does not carry a valid public key"
        if not same_key_id(key_id(raw), kid):
            return f"entry {pos}: key id {kid} does not belong to the public key it carries"
        if self.keys.get(key_id(raw)) != raw:
            return f"entry {pos}: key {kid} is missing from the key store or differs from it"
        return raw

    def _genesis(self, e: dict[str, Any], apply: bool) -> str | None:
        d = e["details"]
        if e["action"] != INIT_ACTION:
            return f"entry 0 is {e['action']!r}, not {INIT_ACTION!r}: the start of the log is gone"
        if d.get("origin") != self.origin:
            return f"entry 0 names origin {d.get('origin')!r}, but the log is {self.origin!r}"
        if not same_key_id(d.get("key_id"), e["key_id"]):
            return "entry 0 is not signed by the key it announces"
        if self.pin is not None:
            pinned = key_id(self.pin.first_key)
            announced = d.get("public_key")
            if not same_key_id(d.get("key_id"), pinned) or announced != base64.b64encode(self.pin.first_key).decode():
                return (f"entry 0 starts the key chain at key {d.get('key_id')}, but the chain must start at "
                        f"key {pinned}, pinned by {self.pin.source}: the log was rewritten, or is not this "
                        f"installation's")
        raw = self._public_key(d.get("public_key"), e["key_id"], 0)
        if isinstance(raw, str):
            return raw
        if apply:
            self.history = [(0, key_id(raw), raw)]
            self.announced = [(-1, raw)]
        return None

    def _rotation(self, pos: int, e: dict[str, Any], apply: bool) -> str | None:
        d = e["details"]
        if not same_key_id(d.get("old_key_id"), e["key_id"]):
            return f"entry {pos}: a key rotation must be signed by the key it replaces"
        raw = self._public_key(d.get("new_public_key"), d.get("new_key_id"), pos)
        if isinstance(raw, str):
            return raw
        if apply:
            self.history.append((pos + 1, key_id(raw), raw))
            self.announced.append((pos, raw))
        return None
