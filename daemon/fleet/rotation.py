"""A witnessed box's signing key rotation, proven to its witnesses from its own log.

After `keys.rotate` a box signs its checkpoints with a new key, which its witnesses have not
pinned. Its log holds the proof that the change was authorised: an `audit.key_rotate` entry,
signed by the key it replaces, that announces the new public key. With a checkpoint signed by a
key other than the one it published with before, a box therefore publishes the chain of rotation
entries from that key to the new one, each with its inclusion proof in the new checkpoint's tree.
A witness follows the chain from the key it pinned and accepts the new key only at its end.
"""

from __future__ import annotations

import base64
import json
from typing import Any

from daemon.audit import merkle
from daemon.audit.entry import ROTATE_ACTION, canonical_entry, key_id, parse_entry
from daemon.audit.log import AuditLog
from daemon.crypto import ed25519
from daemon.crypto.keyid import same_key_id

MAX_CHAIN = 100
"""Rotation entries a box looks back over (more rotations than this between two publishes: none proven)."""


async def evidence(audit: AuditLog, old_key: bytes, new_key: bytes, size: int) -> list[dict[str, Any]] | None:
    """The rotation entries from `old_key` to `new_key` in the tree of `size` entries, each with
    its inclusion proof; None when the log holds no such chain."""
    rotations = [e for e in await audit.tail(limit=MAX_CHAIN, action=ROTATE_ACTION) if e["seq"] < size]
    chain: list[dict[str, Any]] = []
    key = old_key
    while key != new_key:
        step = next((e for e in rotations if same_key_id(e["key_id"], key_id(key))
                     and (not chain or e["seq"] > chain[-1]["seq"])), None)
        if step is None:
            return None
        proof = await audit.proof(step["seq"], size)
        chain.append({"seq": step["seq"], "entry": canonical_entry(step).decode(), "signature": step["signature"],
                      "proof": proof["hashes"]})
        key = base64.b64decode(step["details"]["new_public_key"])
    return chain


def follow(chain: list[dict[str, Any]], pinned: bytes, size: int, root: bytes) -> bytes:
    """The key the chain of rotation entries leads to from `pinned`, each entry proven in the tree of
    `size` entries with root `root`; ValueError says which step fails."""
    key = pinned
    for n, step in enumerate(chain):
        try:
            data = step["entry"].encode()
            entry = parse_entry(data)
            leaf = merkle.leaf_hash(data)
            signature = bytes.fromhex(step["signature"])
            proof = [bytes.fromhex(h) for h in step["proof"]]
            seq = int(step["seq"])
        except (KeyError, TypeError, ValueError) as exc:
            raise ValueError(f"rotation step {n} is malformed: {exc}") from None
        if entry["action"] != ROTATE_ACTION or entry["seq"] != seq:
            raise ValueError(f"rotation step {n} is not an {ROTATE_ACTION} entry at {seq}")
        if not ed25519.verify(key, signature, leaf):
            raise ValueError(f"rotation entry {seq} is not signed by the key it replaces")
        if not merkle.verify_inclusion(seq, size, leaf, proof, root):
            raise ValueError(f"rotation entry {seq} is not in the checkpoint's tree")
        try:
            key = base64.b64decode(entry["details"]["new_public_key"], validate=True)
        except (KeyError, TypeError, ValueError):
            raise ValueError(f"rotation entry {seq} announces no public key") from None
    return key


def encode(chain: list[dict[str, Any]] | None) -> str | None:
    return None if chain is None else json.dumps(chain)
