"""The job listing read a page at a time, for the console and the `sai jobs` command alike."""

from __future__ import annotations

from typing import Any

from console.fleetroute import Call

PAGE = 1000
"""The most `job.list` gives at once; a page holds fewer where more would not fit in one reply line."""


async def fetch_jobs(call: Call, state: str | None = None,
                     limit: int | None = None) -> tuple[list[dict[str, Any]], int]:
    """The first `limit` jobs (None: all) and how many match in all. A job that moves between pages
    while they are read is listed once."""
    jobs: dict[str, dict[str, Any]] = {}
    total = 0
    while limit is None or len(jobs) < limit:
        offset = len(jobs)
        page = await call("job.list", state=state, offset=offset,
                          limit=PAGE if limit is None else min(PAGE, limit - offset))
        total = page.get("total", total)
        jobs.update((job["job_id"], job) for job in page["jobs"] if job["job_id"] not in jobs)
        if len(jobs) == offset or len(jobs) >= total:
            break
    return list(jobs.values()), max(total, len(jobs))
