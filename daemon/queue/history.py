"""Finished-job history for performance reports: timings, sizes, batch and memory figures, no prompts.

The jobs table keeps the timings. What it has no column for (how many jobs and images shared the
job's batch, the worker's peak memory per image and its RSS after the batch) goes into `job_stats`,
one row per job, written when the worker reports the batch; a retried job keeps its last attempt's
figures. Reads and these writes use a connection of their own, so a long report never holds up the
queue's group commits (WAL lets the two run side by side). The query never selects the prompt
columns, so no prompt can leave through it.
"""

from __future__ import annotations

import json
import logging
import math
import sqlite3
import time
from pathlib import Path
from typing import Any

import aiosqlite

from daemon.protocol import PRIORITIES
from daemon.queue.jobs import CANCELLED, SUCCEEDED, Job
from daemon.timefmt import rfc3339

log = logging.getLogger("sai.queue")

SCHEMA = """
CREATE TABLE IF NOT EXISTS job_stats (
    job_id TEXT PRIMARY KEY,
    batch_jobs INTEGER NOT NULL,
    batch_images INTEGER NOT NULL,
    peak_bytes_per_image INTEGER,
    worker_rss INTEGER,
    recorded_at REAL NOT NULL
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS jobs_finished_at ON jobs(finished_at, seq) WHERE finished_at IS NOT NULL;
"""

RECORD = """
INSERT INTO job_stats (job_id, batch_jobs, batch_images, peak_bytes_per_image, worker_rss, recorded_at)
VALUES (?, ?, ?, ?, ?, ?)
ON CONFLICT (job_id) DO UPDATE SET batch_jobs = excluded.batch_jobs, batch_images = excluded.batch_images,
    peak_bytes_per_image = excluded.peak_bytes_per_image, worker_rss = excluded.worker_rss,
    recorded_at = excluded.recorded_at
"""

COLUMNS = ("j.seq", "j.job_id", "j.state", "j.priority", "j.params", "j.user", "j.model_id", "j.created_at",
           "j.started_at", "j.finished_at", "j.attempts", "j.error", "s.batch_jobs", "s.batch_images",
           "s.peak_bytes_per_image", "s.worker_rss")
PARAMS = ("width", "height", "steps", "guidance", "count")
"""The job parameters a report groups by; seeds and prompts stay out."""

MAX_PAGE = 1000

# The failure texts the dispatcher and the queue manager write, by the kind a report counts them under:
# (where the text must appear, the text, kind); first match wins, anything else is "other".
ERROR_KINDS = (
    ("start", "quarantined after", "worker_crash"),
    ("start", "interrupted", "interrupted"),
    ("anywhere", "out of memory", "oom"),
    ("start", "generation failed", "generation"),
    ("start", "writing outputs failed", "output"),
)


def error_kind(state: str, error: str | None) -> str | None:
    """What kind of outcome an unsuccessful job had: cancelled, worker_crash (quarantined after
    crashes), interrupted (the daemon died too often), oom, generation, output or other."""
    if state == SUCCEEDED:
        return None
    if state == CANCELLED:
        return "cancelled"
    text = (error or "").strip().lower()
    for where, needle, kind in ERROR_KINDS:
        if text.startswith(needle) if where == "start" else needle in text:
            return kind
    return "other"


def encode_cursor(finished_at: float, seq: int) -> str:
    return f"{finished_at!r}/{seq}"


def decode_cursor(cursor: str) -> tuple[float, int]:
    """The (finished_at, seq) a page ended at; ValueError for anything `encode_cursor` did not make."""
    stamp, sep, seq = cursor.partition("/")
    try:
        finished_at = float(stamp)
        if not sep or not math.isfinite(finished_at):
            raise ValueError
        return finished_at, int(seq)
    except ValueError:
        raise ValueError(f"{cursor!r} is not a cursor from an earlier page (next_cursor)") from None


def _row(values: tuple[Any, ...]) -> dict[str, Any]:
    (_, job_id, state, priority, params, user, model_id, created_at, started_at, finished_at, attempts, error,
     batch_jobs, batch_images, peak, rss) = values
    decoded = json.loads(params)
    return {
        "job_id": job_id, "state": state, "priority": PRIORITIES[priority], "user": user, "model_id": model_id,
        **{key: decoded.get(key) for key in PARAMS},
        "created_at": rfc3339(created_at), "started_at": rfc3339(started_at), "finished_at": rfc3339(finished_at),
        "attempts": attempts, "error_kind": error_kind(state, error),
        "batch_jobs": batch_jobs, "batch_images": batch_images, "peak_bytes_per_image": peak, "worker_rss": rss,
    }


class JobHistory:
    def __init__(self, db: aiosqlite.Connection) -> None:
        self._db = db

    @classmethod
    async def open(cls, path: Path) -> JobHistory:
        """Open the queue's database (the jobs table must exist: open the JobStore first)."""
        db = await aiosqlite.connect(path)
        await db.execute("PRAGMA busy_timeout=5000")
        await db.execute("PRAGMA synchronous=NORMAL")  # figures for reports; losing the last few is harmless
        await db.executescript(SCHEMA)
        await db.commit()
        return cls(db)

    async def close(self) -> None:
        await self._db.close()

    async def record_batch(self, jobs: list[Job], figures: dict[str, Any]) -> None:
        """Store a batch's figures for each of its jobs: `jobs`, `images` (in the batch),
        `peak_bytes_per_image` and `worker_rss` (None when the worker did not report them)."""
        now = time.time()
        rows = [(job.job_id, int(figures["jobs"]), int(figures["images"]), figures.get("peak_bytes_per_image"),
                 figures.get("worker_rss"), now) for job in jobs]
        try:
            await self._db.executemany(RECORD, rows)
            await self._db.commit()
        except sqlite3.Error as exc:
            log.warning("could not keep the figures of a batch for reports: %s", exc)
            await self._db.rollback()

    async def finished(self, since: float, until: float, limit: int,
                       after: tuple[float, int] | None = None) -> tuple[list[dict[str, Any]], str | None]:
        """Jobs that finished in [since, until] after the (finished_at, seq) `after` (a decoded
        cursor), oldest finish first, at most `limit`; and the cursor of the next page (None on the last)."""
        after = after or (float("-inf"), 0)
        # Only a finished job has finished_at (a re-queued one keeps it null), so the index answers.
        rows = await self._db.execute_fetchall(
            f"SELECT {', '.join(COLUMNS)} FROM jobs j LEFT JOIN job_stats s ON s.job_id = j.job_id "
            "WHERE j.finished_at IS NOT NULL AND j.finished_at >= ? AND j.finished_at <= ? "
            "AND (j.finished_at, j.seq) > (?, ?) ORDER BY j.finished_at, j.seq LIMIT ?",
            (since, until, *after, limit + 1))
        rows = list(rows)
        more = len(rows) > limit
        rows = rows[:limit]
        next_cursor = encode_cursor(rows[-1][9], rows[-1][0]) if more else None
        return [_row(tuple(row)) for row in rows], next_cursor
