"""Audit entries: what may be recorded, canonical entry bytes, leaf hash and key ids.

The canonical bytes of an entry are its JSON object with sorted keys, no whitespace, UTF-8, no
ASCII escaping (docs/formats.md, "Audit log"). They are built here with a fixed template rather
than `json.dumps` of the whole object because the verifier rebuilds them a million times; the
template produces exactly what `canonical_json` would (a test checks it on random entries).
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from datetime import datetime, timezone
from json.encoder import encode_basestring  # type: ignore[attr-defined]
from typing import Any, Mapping

INIT_ACTION = "audit.init"
"""Entry 0 of every log: names the origin and the first signing key."""
ROTATE_ACTION = "audit.key_rotate"
"""Announces the next signing key; signed by the key it replaces."""

ENTRY_KEYS = ("action", "actor", "details", "key_id", "seq", "subject", "time")
ACTOR_KEYS = ("pid", "uid", "user")
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
ACTION_RE = re.compile(r"^[a-z][a-z0-9_]*(\.[a-z0-9_]+)*$")


def canonical_json(value: Any) -> str:
    """Sorted keys, no whitespace, no ASCII escaping, no NaN or infinities."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False)


def check_details(details: Mapping[str, Any]) -> str:
    """Validate what a caller wants recorded; return the canonical JSON text of `details`.

    Raises ValueError for a forbidden key (prompt text, secrets), a value JSON cannot carry
    exactly, or details larger than MAX_DETAILS_BYTES.
    """
    if not isinstance(details, Mapping):
        raise ValueError(f"audit details must be a dict, not {type(details).__name__}")
    _check_value(details, "details")
    text = canonical_json(dict(details))
    size = len(text.encode("utf-8"))
    if size > MAX_DETAILS_BYTES:
        raise ValueError(f"audit details are {size} bytes; at most {MAX_DETAILS_BYTES} (record hashes, not content)")
    return text


def _check_value(value: Any, where: str) -> None:
    if value is None or isinstance(value, (bool, int)):
        return
    if isinstance(value, float):
        if not math.isfinite(value):
            raise ValueError(f"audit {where} is {value!r}: only finite numbers can be recorded")
        return
    if isinstance(value, str):
        _check_text(value, where)
        return
    if isinstance(value, (list, tuple)):
        for i, item in enumerate(value):
            _check_value(item, f"{where}[{i}]")
        return
    if isinstance(value, Mapping):
        for key, item in value.items():
            if not isinstance(key, str):
                raise ValueError(f"audit {where} has a non-string key {key!r}")
            _check_text(key, f"{where} key")
            if key.lower() in FORBIDDEN_DETAIL_KEYS:
                raise ValueError(f"audit {where} may not carry {key!r}: record a hash "
                                 f"(e.g. {key.lower()}_sha256), never prompt text or secrets")
            _check_value(item, f"{where}.{key}")
        return
    raise ValueError(f"audit {where} has a {type(value).__name__}, which JSON cannot carry")


def _check_text(text: str, where: str) -> None:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise ValueError(f"audit {where} is not valid Unicode: {exc.reason}") from None


def check_actor(actor: Mapping[str, Any]) -> dict[str, Any]:
    """`{"uid": int, "user": str, "pid": int}`, nothing else."""
    if not isinstance(actor, Mapping) or set(actor) != set(ACTOR_KEYS):
        raise ValueError(f"audit actor must have exactly uid, user and pid, got {actor!r}")
    uid, user, pid = actor["uid"], actor["user"], actor["pid"]
    if not all(isinstance(v, int) and not isinstance(v, bool) for v in (uid, pid)) or not isinstance(user, str):
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
            f'"seq":{seq},"subject":{e(subject)},"time":{e(time)}}}').encode("utf-8")


def canonical_entry(entry: Mapping[str, Any]) -> bytes:
    """Canonical bytes of a parsed entry object (the seven fields of ENTRY_KEYS)."""
    return canonical_json({k: entry[k] for k in ENTRY_KEYS}).encode("utf-8")


def parse_entry(data: bytes) -> dict[str, Any]:
    """Parse canonical entry bytes; ValueError unless they are exactly canonical and well-formed."""
    try:
        entry = json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ValueError(f"not a JSON entry: {exc}") from None
    if not isinstance(entry, dict) or tuple(sorted(entry)) != ENTRY_KEYS:
        raise ValueError("entry does not have exactly the fields " + ", ".join(ENTRY_KEYS))
    try:
        check_actor(entry["actor"])
        check_action(entry["action"])
        check_subject(entry["subject"])
        if not isinstance(entry["details"], dict):
            raise ValueError("details is not an object")
        if not isinstance(entry["seq"], int) or isinstance(entry["seq"], bool):
            raise ValueError("seq is not an integer")
        if not isinstance(entry["key_id"], str) or not isinstance(entry["time"], str):
            raise ValueError("key_id and time must be strings")
        if canonical_entry(entry) != data:
            raise ValueError("entry bytes are not in canonical form")
    except (ValueError, TypeError) as exc:
        raise ValueError(str(exc)) from None
    return entry


def leaf_hash(data: bytes) -> bytes:
    """RFC 6962 leaf hash: SHA-256(0x00 || entry bytes)."""
    return hashlib.sha256(b"\x00" + data).digest()


def key_id(public_key_raw: bytes) -> str:
    """The id an entry names its signing key by: hex of the first 8 bytes of SHA-256(raw key)."""
    return hashlib.sha256(public_key_raw).hexdigest()[:16]


def utc_now() -> str:
    """RFC 3339 UTC with microseconds, e.g. 2025-01-31T12:00:00.000001Z."""
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
