"""report.jobs: finished-job history for performance reports (`sai report`)."""

from __future__ import annotations

import time
from typing import Any

from daemon.api.registry import CallContext, Role, method, time_param
from daemon.protocol import invalid_params
from daemon.queue.history import MAX_PAGE, decode_cursor
from daemon.timefmt import rfc3339

DEFAULT_WINDOW = 86400.0
DEFAULT_LIMIT = 500


def _moment(name: str, value: float | str | None, default: float) -> float:
    return default if value is None else time_param(name, value)


@method("report.jobs", role=Role.VIEWER)
async def jobs(ctx: CallContext, since: float | str | None = None, until: float | str | None = None,
               limit: int = DEFAULT_LIMIT, cursor: str | None = None) -> dict[str, Any]:
    """Jobs that finished between `since` (default: a day before `until`) and `until` (default:
    now), oldest finish first, `limit` (1 to 1000) per page; pass `next_cursor` back as `cursor`
    for the next page. Rows hold timings, sizes, batch and memory figures, never prompts."""
    until_ts = _moment("until", until, time.time())
    since_ts = _moment("since", since, until_ts - DEFAULT_WINDOW)
    if until_ts < since_ts:
        raise invalid_params("until", f"{rfc3339(until_ts)} is before since ({rfc3339(since_ts)})")
    if not 1 <= limit <= MAX_PAGE:
        raise invalid_params("limit", f"{limit} is out of range; allowed 1 to {MAX_PAGE}")
    try:
        after = decode_cursor(cursor) if cursor is not None else None
    except ValueError as exc:
        raise invalid_params("cursor", str(exc)) from None
    rows, next_cursor = await ctx.daemon.job_history.finished(since_ts, until_ts, limit, after)
    return {"since": rfc3339(since_ts), "until": rfc3339(until_ts), "jobs": rows, "next_cursor": next_cursor}
