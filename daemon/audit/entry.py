"""Audit entries: what may be recorded, canonical entry bytes, leaf hash and key ids.

The canonical bytes of an entry are its JSON object with sorted keys, no whitespace, UTF-8, no
ASCII escaping (docs/formats.md, "Audit log"). They are built here with a fixed template rather
than `json.dumps` of the whole object because the verifier rebuilds them a million times; the
template produces exactly what `canonical_json` would (a test checks it on random entries).
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Mapping
from datetime import UTC, datetime
from json.encoder import encode_basestring
from typing import Any

from daemon.crypto.keyid import signing_key_id

INIT_ACTION = "audit.init"
"""Entry 0 of every log: names the origin and the first signing key."""
ROTATE_ACTION = "audit.key_rotate"
"""Announces the next signing key; signed by the key it replaces."""

ENTRY_KEYS = ("action", "actor", "details", "key_id", "seq", "subject", "time")
ACTOR_KEYS = ("pid", "uid", "user")
_ENTRY_KEY_SET = frozenset(ENTRY_KEYS)
_ACTOR_KEY_SET = frozenset(ACTOR_KEYS)
ROTATE_PREFIX = ('{"action":' + encode_basestring(ROTATE_ACTION) + ",").encode()
"""Canonical entries start with their action (the first key in sorted order), so rotation
entries can be found without parsing every entry."""

FORBIDDEN_DETAIL_KEYS = frozenset({
    "prompt", "negative_prompt", "passphrase", "password", "secret", "private_key",
    "signing_key", "data_key", "kek",
})
"""Detail keys that would carry prompt text or secrets. Callers record hashes instead
(e.g. `prompt_sha256`); a details dict with one of these keys, at any depth, is refused."""

MAX_DETAILS_BYTES = 16 * 1024
_CONTAINERS = (dict, list, tuple)
"""What details may nest (other mapping types are refused by json.dumps anyway)."""
ACTION_RE = re.compile(r"^[a-z][a-z0-9_]*(\.[a-z0-9_]+)*$")

Row = tuple[int, bytes, bytes, bytes]
"""One stored entry as the verifiers read it: (seq, entry bytes, signature, leaf hash)."""


_CANONICAL = json.JSONEncoder(sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False)


def canonical_json(value: Any) -> str:
    """Sorted keys, no whitespace, no ASCII escaping, no NaN or infinities."""
    return _CANONICAL.encode(value)


def check_details(details: Mapping[str, Any]) -> str:
    """Validate what a caller wants recorded; return the canonical JSON text of `details`.

    Raises ValueError for a forbidden key (prompt text, secrets), a value JSON cannot carry
    exactly, or details larger than MAX_DETAILS_BYTES.
    """
    if type(details) is not dict and not isinstance(details, Mapping):
        raise ValueError(f"audit details must be a dict, not {type(details).__name__}")
    _check_keys(details, "details")
    try:
        text = canonical_json(dict(details))
        size = len(text.encode("utf-8"))
    except ValueError as exc:  # NaN or infinity; a lone surrogate (UnicodeEncodeError)
        raise ValueError(f"audit details cannot be recorded: {exc}") from None
    except TypeError as exc:  # bytes, sets, objects...
        raise ValueError(f"audit details cannot be recorded: {exc}") from None
    if size > MAX_DETAILS_BYTES:
        raise ValueError(f"audit details are {size} bytes; at most {MAX_DETAILS_BYTES} (record hashes, not content)")
    return text


def _check_keys(value: Any, where: str) -> None:
    """Every key a string and none forbidden, at any depth (scalars are left to json.dumps)."""
    if type(value) is dict or isinstance(value, Mapping):
        for key, item in value.items():
            if type(key) is not str:
                raise ValueError(f"audit {where} has a non-string key {key!r}")
            if key.lower() in FORBIDDEN_DETAIL_KEYS:
                raise ValueError(f"audit {where} may not carry {key!r}: record a hash "
                                 f"(e.g. {key.lower()}_sha256), never prompt text or secrets")
            if type(item) in _CONTAINERS:
                _check_keys(item, f"{where}.{key}")
    else:
        for i, item in enumerate(value):
            if type(item) in _CONTAINERS:
                _check_keys(item, f"{where}[{i}]")


def _check_text(text: str, where: str) -> None:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise ValueError(f"audit {where} is not valid Unicode: {exc.reason}") from None


def check_actor(actor: Mapping[str, Any]) -> dict[str, Any]:
    """`{"uid": int, "user": str, "pid": int}`, nothing else."""
    if not (type(actor) is dict or isinstance(actor, Mapping)) or actor.keys() != _ACTOR_KEY_SET:
        raise ValueError(f"audit actor must have exactly uid, user and pid, got {actor!r}")
    uid, user, pid = actor["uid"], actor["user"], actor["pid"]
    if type(uid) is not int or type(pid) is not int or type(user) is not str:
        raise ValueError(f"audit actor needs integer uid and pid and a string user, got {actor!r}")
    _check_text(user, "actor user")
    return {"uid": uid, "user": user, "pid": pid}


def check_action(action: str) -> str:
    if not isinstance(action, str) or not ACTION_RE.match(action):
        raise ValueError(f"audit action {action!r} must be dotted lower-case words, e.g. job.submit")
    return action


def check_subject(subject: str) -> str:
    if not isinstance(subject, str):
        raise ValueError(f"audit subject must be a string, not {type(subject).__name__}")
    _check_text(subject, "subject")
    return subject


def entry_bytes(seq: int, time: str, actor: Mapping[str, Any], action: str, subject: str,
                details_json: str, key_id: str) -> bytes:
    """The canonical bytes of one entry; `details_json` must come from `check_details`."""
    e = encode_basestring
    return (f'{{"action":{e(action)},"actor":{{"pid":{actor["pid"]},"uid":{actor["uid"]},'
            f'"user":{e(actor["user"])}}},"details":{details_json},"key_id":{e(key_id)},'
            f'"seq":{seq},"subject":{e(subject)},"time":{e(time)}}}').encode()


def canonical_entry(entry: Mapping[str, Any]) -> bytes:
    """Canonical bytes of a parsed entry object (the seven fields of ENTRY_KEYS)."""
    return canonical_json({k: entry[k] for k in ENTRY_KEYS}).encode("utf-8")


def parse_entry(data: bytes) -> dict[str, Any]:
    """Parse canonical entry bytes; ValueError unless they are exactly canonical and well-formed.

    (Hot on the deep verification path, hence type() checks and the byte template rather
    than a second full serialisation.)
    """
    try:
        entry = json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ValueError(f"not a JSON entry: {exc}") from None
    if type(entry) is not dict or entry.keys() != _ENTRY_KEY_SET:
        raise ValueError("entry does not have exactly the fields " + ", ".join(ENTRY_KEYS))
    actor, details = entry["actor"], entry["details"]
    if (type(actor) is not dict or actor.keys() != _ACTOR_KEY_SET or type(actor["uid"]) is not int
            or type(actor["pid"]) is not int or type(actor["user"]) is not str):
        raise ValueError("actor must have exactly an integer uid and pid and a string user")
    if (type(entry["seq"]) is not int or type(details) is not dict or type(entry["action"]) is not str
            or type(entry["subject"]) is not str or type(entry["key_id"]) is not str or type(entry["time"]) is not str):
        raise ValueError("seq must be an integer, details an object, the other fields strings")
    if not ACTION_RE.match(entry["action"]):
        raise ValueError(f"action {entry['action']!r} is not dotted lower-case words")
    try:
        again = entry_bytes(entry["seq"], entry["time"], actor, entry["action"], entry["subject"],
                            canonical_json(details), entry["key_id"])
    except ValueError as exc:
        raise ValueError(f"entry cannot be re-encoded: {exc}") from None
    if again != data:
        raise ValueError("entry bytes are not in canonical form")
    return entry


def leaf_hash(data: bytes) -> bytes:
    """RFC 6962 leaf hash: SHA-256(0x00 || entry bytes)."""
    return hashlib.sha256(b"\x00" + data).digest()


def key_id(public_key_raw: bytes) -> str:
    """The id new entries name their signing key by: the key store's (daemon.crypto.keyid).
    Entries of older logs hold the bare hex digits; compare ids with `same_key_id`."""
    return signing_key_id(public_key_raw)


def utc_now() -> str:
    """RFC 3339 UTC with microseconds, e.g. 2025-01-31T12:00:00.000001Z."""
    return datetime.now(UTC).isoformat(timespec="microseconds").replace("+00:00", "Z")
