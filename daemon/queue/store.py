"""Jobs in SQLite (WAL, synchronous=FULL) through aiosqlite, with group commit.

Writers enqueue statements; one task commits everything waiting in a single transaction and only
then resolves each writer's future. So a reply saying "queued" always follows a durable commit,
and many concurrent submits share one fsync.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, Protocol

import aiosqlite

from daemon.groupcommit import let_others_join, retry_while_locked
from daemon.queue.jobs import FINISHED, Job

log = logging.getLogger("sai.queue")

SCHEMA_VERSION = 4
FINGERPRINTS_OF = """
INSERT OR IGNORE INTO fingerprints (fingerprint, job_id)
SELECT DISTINCT json_extract(o.value, '$.fingerprint'), jobs.job_id FROM jobs, json_each(jobs.outputs) AS o
WHERE json_extract(o.value, '$.fingerprint') IS NOT NULL"""
"""The fingerprints its output records name, for every job (the backfill) or, with `AND jobs.job_id = ?`, one."""
MIGRATIONS = {
    # 2: the model a job ran on, as found at load (model_id, its configured name, was there from 1).
    2: ("ALTER TABLE jobs ADD COLUMN model_family TEXT NOT NULL DEFAULT ''",
        "ALTER TABLE jobs ADD COLUMN weights_sha256 TEXT NOT NULL DEFAULT ''"),
    # 3: the worker (by name) and device that ran the job's latest attempt (one worker per device).
    3: ("ALTER TABLE jobs ADD COLUMN worker TEXT NOT NULL DEFAULT ''",
        "ALTER TABLE jobs ADD COLUMN device TEXT NOT NULL DEFAULT ''"),
    # 4: fingerprint -> job, for `output.identify` (outputs written before are indexed from their records).
    4: ("CREATE TABLE IF NOT EXISTS fingerprints (fingerprint TEXT NOT NULL, job_id TEXT NOT NULL, "
        "PRIMARY KEY (fingerprint, job_id)) WITHOUT ROWID", FINGERPRINTS_OF),
}
"""Statements that bring a database of the version before the key up to it (an older daemon's
jobs stay readable; a newer database than this code knows is refused rather than misread)."""
SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    job_id TEXT NOT NULL UNIQUE,
    state TEXT NOT NULL,
    priority INTEGER NOT NULL,
    params TEXT NOT NULL,
    prompt BLOB NOT NULL,
    negative_prompt BLOB NOT NULL,
    user TEXT NOT NULL,
    uid INTEGER NOT NULL,
    client_token TEXT,
    created_at REAL NOT NULL,
    enqueued_at REAL NOT NULL,
    started_at REAL,
    finished_at REAL,
    progress REAL NOT NULL DEFAULT 0,
    error TEXT,
    outputs TEXT NOT NULL DEFAULT '[]',
    attempts INTEGER NOT NULL DEFAULT 0,
    risk REAL NOT NULL DEFAULT 0,
    warnings TEXT NOT NULL DEFAULT '[]',
    model_id TEXT NOT NULL DEFAULT '',
    model_family TEXT NOT NULL DEFAULT '',
    weights_sha256 TEXT NOT NULL DEFAULT '',
    worker TEXT NOT NULL DEFAULT '',
    device TEXT NOT NULL DEFAULT ''
);
CREATE UNIQUE INDEX IF NOT EXISTS jobs_client_token ON jobs(uid, client_token) WHERE client_token IS NOT NULL;
CREATE INDEX IF NOT EXISTS jobs_state ON jobs(state, seq);
CREATE TABLE IF NOT EXISTS settings (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS fingerprints (
    fingerprint TEXT NOT NULL,
    job_id TEXT NOT NULL,
    PRIMARY KEY (fingerprint, job_id)
) WITHOUT ROWID;
"""

COLUMNS = ("seq", "job_id", "state", "priority", "params", "prompt", "negative_prompt", "user", "uid",
           "client_token", "created_at", "enqueued_at", "started_at", "finished_at", "progress", "error",
           "outputs", "attempts", "risk", "warnings", "model_id", "model_family", "weights_sha256", "worker", "device")
MUTABLE = ("state", "priority", "enqueued_at", "started_at", "finished_at", "progress", "error",
           "outputs", "attempts", "model_family", "weights_sha256", "worker", "device")
INSERT_SQL = f"INSERT INTO jobs ({', '.join(COLUMNS)}) VALUES ({', '.join('?' * len(COLUMNS))})"
UPDATE_SQL = f"UPDATE jobs SET {', '.join(f'{c} = ?' for c in MUTABLE)} WHERE job_id = ?"
INDEX_SQL = FINGERPRINTS_OF + " AND jobs.job_id = ?"


def _json_list(items: list[Any]) -> str:
    return json.dumps(items) if items else "[]"


class JobStoreClosed(RuntimeError):
    """The job store's committer has ended: no write can become durable."""


class TextSealer(Protocol):
    """How prompts are stored. The daemon passes `daemon.crypto.envelope.PromptSealer` (SAIE blobs
    bound to the job id); `PlainText` is for tests of the queue alone."""

    def seal(self, text: str, job_id: str) -> bytes: ...

    def open(self, blob: bytes, job_id: str) -> str: ...


class PlainText:
    def seal(self, text: str, job_id: str) -> bytes:
        return text.encode("utf-8")

    def open(self, blob: bytes, job_id: str) -> str:
        return bytes(blob).decode("utf-8")


# transform(blob, job_id) -> the blob to store instead, or None to leave it as it is.
BlobTransform = Callable[[bytes, str], "bytes | None"]
Runner = Callable[..., Awaitable[Any]]


def _transform_rows(transform: BlobTransform, rows: list[Any]) -> list[tuple[bytes, bytes, str]]:
    changed = []
    for _, job_id, prompt, negative in rows:
        new_prompt, new_negative = transform(bytes(prompt), job_id), transform(bytes(negative), job_id)
        if new_prompt is not None or new_negative is not None:
            changed.append((new_prompt if new_prompt is not None else bytes(prompt),
                            new_negative if new_negative is not None else bytes(negative), job_id))
    return changed


def _runs(group: list[tuple[str, tuple[Any, ...], Any]]) -> list[tuple[str, list[tuple[Any, ...]]]]:
    """Consecutive writes of the same statement, merged: one executemany (one trip to the
    database thread) per run instead of one per row, order kept."""
    runs: list[tuple[str, list[tuple[Any, ...]]]] = []
    for sql, args, _ in group:
        if runs and runs[-1][0] == sql:
            runs[-1][1].append(args)
        else:
            runs.append((sql, [args]))
    return runs


async def _migrate(db: aiosqlite.Connection, path: Path) -> None:
    """Bring an existing jobs table up to SCHEMA_VERSION, one version at a time, in one transaction."""
    async with db.execute("SELECT name FROM sqlite_master WHERE type = 'table' AND name = 'jobs'") as cur:
        if await cur.fetchone() is None:
            return  # a new database: SCHEMA makes it whole
    async with db.execute("PRAGMA user_version") as cur:
        row = await cur.fetchone()
    version = int(row[0]) if row else 0
    if version > SCHEMA_VERSION:
        raise RuntimeError(f"{path}: jobs database version {version} is newer than this daemon knows "
                           f"({SCHEMA_VERSION}); run the newer daemon, or restore a backup")
    for step in range(max(version, 1) + 1, SCHEMA_VERSION + 1):
        for statement in MIGRATIONS[step]:
            await db.execute(statement)
        log.info("jobs database %s brought to version %d", path, step)
    await db.commit()


class JobStore:
    def __init__(self, db: aiosqlite.Connection, sealer: TextSealer, max_group: int = 1024,
                 path: Path | None = None, on_stall: Callable[[str | None], Any] | None = None) -> None:
        self._db = db
        self.sealer = sealer
        self.path = path
        self.on_stall: Callable[[str | None], Any] = on_stall or (lambda message: None)
        """Told (message) when writes wait on a lock another process holds, and (None) once they commit."""
        self._pending: asyncio.Queue[tuple[str, tuple[Any, ...], asyncio.Future[None]]] = asyncio.Queue()
        self._max_group = max_group
        self._writer = asyncio.create_task(self._write_loop(), name="sai-jobstore-writer")
        self._writer.add_done_callback(self._refuse_waiting)
        self.commits = 0

    @property
    def writer(self) -> asyncio.Task[None]:
        """The task that commits writes; once it has ended every write fails with JobStoreClosed."""
        return self._writer

    def _refuse_waiting(self, writer: asyncio.Task[None]) -> None:
        while not self._pending.empty():
            _, _, fut = self._pending.get_nowait()
            self._pending.task_done()
            if not fut.done():
                fut.set_exception(JobStoreClosed("the job store's committer stopped before writing this"))

    @classmethod
    async def open(cls, path: Path, sealer: TextSealer | None = None, *,
                   on_stall: Callable[[str | None], Any] | None = None) -> JobStore:
        """`on_stall` is told (message) when writes wait on a lock another process holds, (None) once they commit."""
        db = await aiosqlite.connect(path)
        await db.execute("PRAGMA journal_mode=WAL")
        await db.execute("PRAGMA synchronous=FULL")
        await db.execute("PRAGMA busy_timeout=5000")
        await db.execute("PRAGMA secure_delete=ON")  # replaced prompt blobs are zeroed, not left in free pages
        await _migrate(db, path)
        await db.executescript(SCHEMA)
        await db.execute(f"PRAGMA user_version={SCHEMA_VERSION}")
        await db.commit()
        return cls(db, sealer or PlainText(), path=path, on_stall=on_stall)

    async def close(self) -> None:
        if not self._writer.done():
            await self._pending.join()
        self._writer.cancel()
        await self._db.close()

    async def _write_loop(self) -> None:
        while True:
            group = [await self._pending.get()]
            await let_others_join(self._pending.qsize)
            while len(group) < self._max_group and not self._pending.empty():
                group.append(self._pending.get_nowait())
            try:
                await self._commit(group)
                self.commits += 1
                for _, _, fut in group:
                    if not fut.done():
                        fut.set_result(None)
            except Exception as exc:
                log.error("job store commit failed: %s", exc)
                for _, _, fut in group:  # told first: a rollback that fails too ends this task
                    if not fut.done():
                        fut.set_exception(exc)
                await self._db.rollback()
            finally:
                for _ in group:
                    self._pending.task_done()

    async def _commit(self, group: list[tuple[str, tuple[Any, ...], Any]]) -> None:
        """One transaction for the group; while another process holds the write lock, rolled back
        and tried again (the writers and their callers' replies wait, nothing is dropped)."""
        async def attempt() -> None:
            for sql, rows in _runs(group):
                await self._db.executemany(sql, rows)
            await self._db.commit()

        await retry_while_locked(attempt, "the jobs database", str(self.path or "jobs.sqlite3"),
                                 f"{len(group)} write(s) wait", self.on_stall, undo=self._db.rollback)

    async def _write(self, sql: str, args: tuple[Any, ...]) -> None:
        if self._writer.done():
            raise JobStoreClosed("the job store's committer has stopped; "
                                 "nothing can be saved until the daemon restarts")
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._pending.put_nowait((sql, args, fut))
        await fut

    async def next_seq(self) -> int:
        async with self._db.execute("SELECT COALESCE(MAX(seq), 0) FROM jobs") as cur:
            row = await cur.fetchone()
        return int(row[0]) if row else 0

    async def insert(self, job: Job) -> None:
        values = (job.seq, job.job_id, job.state, job.priority, json.dumps(job.params),
                  self.sealer.seal(job.prompt, job.job_id), self.sealer.seal(job.negative_prompt, job.job_id),
                  job.user, job.uid, job.client_token, job.created_at, job.enqueued_at, job.started_at,
                  job.finished_at, job.progress, job.error, _json_list(job.outputs), job.attempts, job.risk,
                  _json_list(job.warnings), job.model_id, job.model_family, job.weights_sha256, job.worker,
                  job.device)
        await self._write(INSERT_SQL, values)

    async def save(self, job: Job) -> None:
        """Write the job's mutable fields; a job with outputs has their fingerprints indexed in the
        same group commit (`job_ids_of_fingerprint`)."""
        values = (job.state, job.priority, job.enqueued_at, job.started_at, job.finished_at, job.progress,
                  job.error, _json_list(job.outputs), job.attempts, job.model_family, job.weights_sha256,
                  job.worker, job.device, job.job_id)
        if not job.outputs:
            await self._write(UPDATE_SQL, values)
            return
        await asyncio.gather(self._write(UPDATE_SQL, values), self._write(INDEX_SQL, (job.job_id,)))

    async def save_many(self, jobs: list[Job]) -> None:
        await asyncio.gather(*(self.save(job) for job in jobs))

    def _row(self, row: Any) -> Job:
        data = dict(zip(COLUMNS, row))
        for key in ("params", "outputs", "warnings"):
            data[key] = json.loads(data[key])
        data["prompt"] = self.sealer.open(data["prompt"], data["job_id"])
        data["negative_prompt"] = self.sealer.open(data["negative_prompt"], data["job_id"])
        return Job(**data)

    async def _select(self, where: str, args: tuple[Any, ...] = ()) -> list[Job]:
        async with self._db.execute(f"SELECT {', '.join(COLUMNS)} FROM jobs {where}", args) as cur:
            return [self._row(row) for row in await cur.fetchall()]

    async def unfinished(self) -> list[Job]:
        marks = ", ".join("?" * len(FINISHED))
        return await self._select(f"WHERE state NOT IN ({marks}) ORDER BY seq", tuple(FINISHED))

    async def job_ids(self) -> list[str]:
        """Every job id in the store (the audit cross-check reads them)."""
        async with self._db.execute("SELECT job_id FROM jobs") as cur:
            return [row[0] for row in await cur.fetchall()]

    async def job_ids_of_fingerprint(self, fingerprint: str) -> list[str]:
        """The jobs whose outputs carry `fingerprint` (hex), from the index kept by `save`."""
        async with self._db.execute("SELECT job_id FROM fingerprints WHERE fingerprint = ? ORDER BY job_id",
                                    (fingerprint,)) as cur:
            return [row[0] for row in await cur.fetchall()]

    async def get(self, job_id: str) -> Job | None:
        jobs = await self._select("WHERE job_id = ?", (job_id,))
        return jobs[0] if jobs else None

    async def by_token(self, uid: int, token: str) -> Job | None:
        jobs = await self._select("WHERE uid = ? AND client_token = ?", (uid, token))
        return jobs[0] if jobs else None

    async def finished(self, state: str | None, limit: int, offset: int = 0) -> list[Job]:
        if state:
            return await self._select("WHERE state = ? ORDER BY seq DESC LIMIT ? OFFSET ?", (state, limit, offset))
        marks = ", ".join("?" * len(FINISHED))
        return await self._select(f"WHERE state IN ({marks}) ORDER BY seq DESC LIMIT ? OFFSET ?",
                                  (*FINISHED, limit, offset))

    async def count_finished(self, state: str | None) -> int:
        states = (state,) if state else FINISHED
        query = f"SELECT COUNT(*) FROM jobs WHERE state IN ({', '.join('?' * len(states))})"
        async with self._db.execute(query, tuple(states)) as cur:
            row = await cur.fetchone()
        return int(row[0]) if row else 0

    async def ids_starting(self, prefix: str, limit: int) -> list[str]:
        """Job ids that start with `prefix` (hex digits after the `j`, checked by the caller), in
        id order; GLOB is case-sensitive, so SQLite answers it from the job_id index."""
        async with self._db.execute("SELECT job_id FROM jobs WHERE job_id GLOB ? ORDER BY job_id LIMIT ?",
                                    (prefix + "*", limit)) as cur:
            return [row[0] for row in await cur.fetchall()]

    async def get_setting(self, key: str) -> str | None:
        async with self._db.execute("SELECT value FROM settings WHERE key = ?", (key,)) as cur:
            row = await cur.fetchone()
        return row[0] if row else None

    async def set_setting(self, key: str, value: str) -> None:
        await self._write("INSERT INTO settings (key, value) VALUES (?, ?) "
                          "ON CONFLICT(key) DO UPDATE SET value = excluded.value", (key, value))

    async def reseal_prompts(self, transform: BlobTransform, run: Runner | None = None,
                             batch: int = 256) -> int:
        """Rewrite the stored prompt blobs of every job through `transform(blob, job_id)` (None: keep).

        Key rotation re-wraps them with it; start-up encrypts rows an older build stored in plain
        text. Rows are read `batch` at a time in `seq` order; `run(fn, *args)` (the daemon's thread
        pool) computes the new blobs off the event loop, and each batch's updates share one group
        commit. Prompt columns are written nowhere else after insert, so this cannot race a save.
        Returns the number of rows rewritten; ends with a WAL checkpoint so that replaced blobs do
        not linger in the log.
        """
        last, rewritten = 0, 0
        while True:
            async with self._db.execute("SELECT seq, job_id, prompt, negative_prompt FROM jobs WHERE seq > ? "
                                        "ORDER BY seq LIMIT ?", (last, batch)) as cur:
                rows = list(await cur.fetchall())
            if not rows:
                break
            last = rows[-1][0]
            changed = (await run(_transform_rows, transform, rows) if run is not None
                       else _transform_rows(transform, rows))
            await asyncio.gather(*(self._write("UPDATE jobs SET prompt = ?, negative_prompt = ? WHERE job_id = ?",
                                               values) for values in changed))
            rewritten += len(changed)
        if rewritten:
            await self._db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        return rewritten
