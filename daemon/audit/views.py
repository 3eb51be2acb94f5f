"""What of an audit entry a reader may see.

Entries are stored and signed whole. Details that speak of someone's prompt (the rule a refused
prompt hit, the refusal message naming it) are shown only to the user who made the request and to
admins; others get the entry with those members left out and named under `redacted` (its
`leaf_hash` and `signature` still prove it is in the log; `audit.export` carries it whole).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

PRIVATE_DETAILS: dict[str, frozenset[str]] = {"job.refuse": frozenset({"reason", "rule"})}


def entry_view(entry: Mapping[str, Any], reader_uid: int, reader_is_admin: bool) -> Mapping[str, Any]:
    hidden = PRIVATE_DETAILS.get(entry.get("action", ""))
    if not hidden or reader_is_admin or entry.get("actor", {}).get("uid") == reader_uid:
        return entry
    details = entry.get("details") or {}
    redacted = sorted(hidden & details.keys())
    if not redacted:
        return entry
    return {**entry, "details": {k: v for k, v in details.items() if k not in hidden}, "redacted": redacted}
