"""The fleet's job queue in PostgreSQL: submit, claim, leases, fenced writes and the reaper.

Times are the database's clock (`sai_now()`, seconds since the epoch), so boxes whose clocks
disagree still agree on when a lease ends. `attempt` is the fencing token: every claim and
every re-queue raises it, and every later write for the job names the attempt it holds and
changes nothing unless that is still the job's current, running one (StaleAttempt otherwise).
`attempts` counts the runs begun, as on a single box, and is what `max_attempts` bounds.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import asyncpg

from daemon.fleet.connection import Conn, Database
from daemon.fleet.errors import StaleAttempt
from daemon.protocol import PRIORITIES
from daemon.queue.jobs import FAILED, FINISHED, QUEUED, RUNNING, Job
from daemon.queue.store import TextSealer

NOTIFY_CHANNEL = "sai_jobs"
"""Told the model id of every job submitted or put back in the queue (daemon.fleet.wakeup listens)."""
CANCEL_CHANNEL = "sai_cancel"
"""Told the name of the box running a job whose cancel another box asked for (request_cancel)."""
TOP_RANK = len(PRIORITIES) - 1
JOB_COLUMNS = ("seq", "job_id", "state", "priority", "params", "prompt", "negative_prompt", "user", "uid",
               "client_token", "created_at", "enqueued_at", "started_at", "finished_at", "progress", "error",
               "outputs", "attempts", "risk", "warnings", "model_id", "model_family", "weights_sha256", "worker",
               "device")
INSERTED = JOB_COLUMNS[1:]  # seq is the database's
_insert_names = ", ".join(f'"{c}"' for c in INSERTED)
_insert_marks = ", ".join(f"${i}" for i in range(1, len(INSERTED) + 1))
INSERT_SQL = (f"INSERT INTO jobs ({_insert_names}) VALUES ({_insert_marks}) "
              "ON CONFLICT (\"user\", client_token) WHERE client_token IS NOT NULL DO NOTHING RETURNING *")
RANK_SQL = (f"LEAST({TOP_RANK}, priority + CASE WHEN $6::float8 > 0 "
            "THEN floor(GREATEST(0, sai_now() - enqueued_at) / $6::float8)::int ELSE 0 END)")
CLAIM_SQL = f"""
WITH head AS (
    SELECT job_id FROM jobs
    WHERE state = 'queued' AND ($3::text[] IS NULL OR model_id = ANY($3::text[]))
    ORDER BY {RANK_SQL} DESC, (model_id = ANY($4::text[])) DESC, seq
    LIMIT 1 FOR UPDATE SKIP LOCKED)
UPDATE jobs SET state = 'running', box = $1, worker = $2, device = $7, attempt = attempt + 1,
    attempts = attempts + 1, lease_until = sai_now() + $5::float8, started_at = sai_now(), progress = 0
FROM head WHERE jobs.job_id = head.job_id
RETURNING jobs.*"""
COMPANIONS_SQL = f"""
SELECT job_id, (params->>'count')::int AS count FROM jobs
WHERE state = 'queued' AND model_id = $1 AND COALESCE(params->'scheduler', '""') = $2::jsonb
    AND params->'width' = $3::jsonb AND params->'height' = $4::jsonb AND params->'steps' = $5::jsonb
    AND params->'guidance' = $7::jsonb AND COALESCE(params->'reproducible', 'false') <> 'true'
ORDER BY {RANK_SQL} DESC, seq
LIMIT $8 FOR UPDATE SKIP LOCKED"""
"""Queued jobs that can share the head's pipeline call (daemon.queue.jobs.SHAPE_KEYS), most urgent first."""
TAKE_SQL = """
UPDATE jobs SET state = 'running', box = $1, worker = $2, device = $3, attempt = attempt + 1,
    attempts = attempts + 1, lease_until = sai_now() + $4::float8, started_at = sai_now(), progress = 0
WHERE job_id = ANY($5::text[]) RETURNING *"""
REAP_SQL = """
WITH expired AS (
    SELECT job_id FROM jobs WHERE state = 'running' AND lease_until < sai_now() FOR UPDATE SKIP LOCKED)
UPDATE jobs SET attempt = attempt + 1, lease_until = NULL, progress = 0,
    state = CASE WHEN cancel_attempt = attempt THEN 'cancelled' WHEN attempts >= $1 THEN 'failed' ELSE 'queued' END,
    started_at = CASE WHEN cancel_attempt = attempt OR attempts >= $1 THEN started_at END,
    finished_at = CASE WHEN cancel_attempt = attempt OR attempts >= $1 THEN sai_now() END,
    error = CASE WHEN cancel_attempt = attempt
                 THEN format('cancelled by %s while running (box %s stopped before it did: its lease expired)',
                             cancel_by, box)
                 WHEN attempts >= $1 THEN format('its lease expired on box %s, attempt %s of %s; not retried again',
                                                 box, attempts, $1) ELSE error END
FROM expired WHERE jobs.job_id = expired.job_id
RETURNING jobs.job_id, jobs.state, jobs.box, jobs.attempt"""
"""A job whose run was asked to stop (request_cancel) ends cancelled instead of running again."""


@dataclass
class FleetJob:
    """A job as the fleet holds it: the job itself plus who holds it under which attempt."""

    job: Job
    box: str
    attempt: int
    lease_until: float | None

    @property
    def job_id(self) -> str:
        return self.job.job_id

    def to_api(self, show_prompt: bool) -> dict[str, Any]:
        return {**self.job.to_api(show_prompt), "box": self.box or None, "attempt": self.attempt}


@dataclass(frozen=True)
class Reaped:
    job_id: str
    state: str
    """queued (re-queued) or failed (its attempts were used up)."""
    box: str
    """The box whose lease expired."""
    attempt: int


def _json(items: Any) -> str:
    return json.dumps(items)


class FleetQueue:
    """One box's handle on the fleet queue; `box` is its installation name."""

    def __init__(self, db: Database, sealer: TextSealer, *, box: str, lease_seconds: float, max_attempts: int,
                 aging_seconds: float) -> None:
        self.db = db
        self.sealer = sealer
        self.box = box
        self.lease_seconds = lease_seconds
        self.max_attempts = max_attempts
        self.aging_seconds = aging_seconds

    def _job(self, row: asyncpg.Record) -> FleetJob:
        data = {name: row[name] for name in JOB_COLUMNS}
        for key in ("params", "outputs", "warnings"):
            data[key] = json.loads(data[key])
        data["prompt"] = self.sealer.open(bytes(data["prompt"]), data["job_id"])
        data["negative_prompt"] = self.sealer.open(bytes(data["negative_prompt"]), data["job_id"])
        return FleetJob(Job(**data, box=row["box"]), row["box"], row["attempt"], row["lease_until"])

    # -- submitting and reading ----------------------------------------------------------------

    async def submit(self, job: Job) -> tuple[FleetJob, bool]:
        """Insert a queued job and wake idle boxes; durable (committed) before it returns.

        With a `client_token`, a job of the same user (by name) and token already in the fleet (from any box)
        is returned instead, with True: the submit is idempotent fleet-wide. `job.seq` is set."""
        values = (job.job_id, job.state, job.priority, _json(job.params),
                  self.sealer.seal(job.prompt, job.job_id), self.sealer.seal(job.negative_prompt, job.job_id),
                  job.user, job.uid, job.client_token, job.created_at, job.enqueued_at, job.started_at,
                  job.finished_at, job.progress, job.error, _json(job.outputs), job.attempts, job.risk,
                  _json(job.warnings), job.model_id, job.model_family, job.weights_sha256, job.worker, job.device)

        async def insert(conn: Conn) -> tuple[FleetJob, bool]:
            async with conn.transaction():
                row = await conn.fetchrow(INSERT_SQL, *values)
                if row is None:
                    first = await conn.fetchrow('SELECT * FROM jobs WHERE "user" = $1 AND client_token = $2',
                                                job.user, job.client_token)
                    if first is None:  # cannot be: the conflict was with this row, and jobs are never deleted
                        raise RuntimeError(f"job with client_token {job.client_token!r} conflicted but is gone")
                    return self._job(first), True
                await conn.execute("SELECT pg_notify($1, $2)", NOTIFY_CHANNEL, job.model_id)
            return self._job(row), False

        # Repeating is only safe when the token makes a second insert find the first.
        held, duplicate = await self.db.run(insert, retry=job.client_token is not None)
        job.seq = held.job.seq
        return held, duplicate

    async def get(self, job_id: str) -> FleetJob | None:
        row = await self.db.run(lambda conn: conn.fetchrow("SELECT * FROM jobs WHERE job_id = $1", job_id),
                                retry=True)
        return None if row is None else self._job(row)

    async def by_token(self, user: str, token: str) -> FleetJob | None:
        """The job `user` (a login name: the fleet's identity) submitted with `token`, from any box."""
        row = await self.db.run(lambda conn: conn.fetchrow(
            'SELECT * FROM jobs WHERE "user" = $1 AND client_token = $2', user, token), retry=True)
        return None if row is None else self._job(row)

    async def unfinished(self, state: str | None = None, limit: int | None = None, offset: int = 0) -> list[FleetJob]:
        """Queued and running jobs of the whole fleet (of `state`, None: both), in submission order;
        only the page asked for is read and its prompts opened."""
        rows = await self.db.run(lambda conn: conn.fetch(
            "SELECT * FROM jobs WHERE state IN ('queued', 'running') AND ($1::text IS NULL OR state = $1) "
            "ORDER BY seq LIMIT $2 OFFSET $3", state, limit, offset), retry=True)
        return [self._job(row) for row in rows]

    async def queued_of(self, user: str) -> int:
        """The user's queued jobs over the fleet, by name: a user's uid may differ between boxes.
        (The jobs_queued partial index bounds the scan to the fleet's queued rows.)"""
        return int(await self.db.run(lambda conn: conn.fetchval(
            "SELECT count(*) FROM jobs WHERE state = 'queued' AND \"user\" = $1", user), retry=True))

    async def counts(self) -> dict[str, int]:
        """Jobs by state, over the fleet."""
        rows = await self.db.run(lambda conn: conn.fetch("SELECT state, count(*) AS n FROM jobs GROUP BY state"),
                                 retry=True)
        return {row["state"]: int(row["n"]) for row in rows}

    async def finished_page(self, state: str | None, limit: int, offset: int = 0) -> list[FleetJob]:
        """Finished jobs of the fleet (of `state`, None: any finished state), newest first."""
        rows = await self.db.run(lambda conn: conn.fetch(
            "SELECT * FROM jobs WHERE state IN ('succeeded', 'failed', 'cancelled') AND ($1::text IS NULL "
            "OR state = $1) ORDER BY seq DESC LIMIT $2 OFFSET $3", state, limit, offset), retry=True)
        return [self._job(row) for row in rows]

    async def ids_starting(self, prefix: str, limit: int) -> list[str]:
        rows = await self.db.run(lambda conn: conn.fetch(
            "SELECT job_id FROM jobs WHERE job_id LIKE $1 || '%' ORDER BY job_id LIMIT $2", prefix, limit), retry=True)
        return [row["job_id"] for row in rows]

    async def set_priority(self, job_id: str, priority: int) -> bool:
        """Change a queued job's priority; False when it is no longer queued."""
        status = await self.db.run(lambda conn: conn.execute(
            "UPDATE jobs SET priority = $2 WHERE job_id = $1 AND state = 'queued'", job_id, priority))
        return status.endswith(" 1")

    async def held_by_box(self) -> list[FleetJob]:
        """Jobs the fleet has running on this box (after a restart: those its previous run held)."""
        rows = await self.db.run(lambda conn: conn.fetch(
            "SELECT * FROM jobs WHERE state = 'running' AND box = $1 ORDER BY seq", self.box), retry=True)
        return [self._job(row) for row in rows]

    # -- claiming and holding ------------------------------------------------------------------

    async def claim(self, worker: str, *, models: Sequence[str] | None = None, held: Sequence[str] = (),
                    device: str = "") -> FleetJob | None:
        """The most urgent queued job this worker can run, now running here under a new attempt
        and a lease of `lease_seconds`; None when there is none.

        Urgency is the priority raised one level per `aging_seconds` waited (up to critical), then
        submission order; `models` (None: any) are the models the worker can run, and among jobs of
        the same urgency one whose model is in `held` (already loaded) goes first. Boxes claiming
        at once never wait on each other's rows (SKIP LOCKED) and never get the same job."""
        models_arg = list(models) if models is not None else None
        row = await self.db.run(lambda conn: conn.fetchrow(
            CLAIM_SQL, self.box, worker, models_arg, list(held), self.lease_seconds, self.aging_seconds, device))
        return None if row is None else self._job(row)

    async def claim_batch(self, worker: str, max_images: int, *, models: Sequence[str] | None = None,
                          held: Sequence[str] = (), device: str = "") -> list[FleetJob]:
        """`claim`'s head job plus queued jobs of the same shape, up to `max_images` images in all,
        claimed together in one transaction (each under its own new attempt); [] when nothing is
        queued that this worker can run. A reproducible head runs alone, and a reproducible job
        never joins a batch (as pick_batch on a single box); a head whose count alone exceeds the
        limit still runs (the worker splits it)."""
        models_arg = list(models) if models is not None else None

        async def work(conn: Conn) -> list[FleetJob]:
            async with conn.transaction():
                row = await conn.fetchrow(CLAIM_SQL, self.box, worker, models_arg, list(held), self.lease_seconds,
                                          self.aging_seconds, device)
                if row is None:
                    return []
                head = self._job(row)
                if head.job.runs_alone or head.job.count >= max_images:
                    return [head]
                p = head.job.params
                candidates = await conn.fetch(
                    COMPANIONS_SQL, head.job.model_id, _json(p.get("scheduler", "")), _json(p["width"]),
                    _json(p["height"]), _json(p["steps"]), self.aging_seconds, _json(p["guidance"]),
                    max_images - head.job.count)
                chosen, images = [], head.job.count
                for candidate in candidates:
                    if images + candidate["count"] <= max_images:
                        chosen.append(candidate["job_id"])
                        images += candidate["count"]
                if not chosen:
                    return [head]
                taken = {r["job_id"]: r for r in await conn.fetch(TAKE_SQL, self.box, worker, device,
                                                                   self.lease_seconds, chosen)}
                return [head, *(self._job(taken[job_id]) for job_id in chosen)]

        return await self.db.run(work)

    async def _fenced(self, job_id: str, attempt: int, sql: str, *args: Any) -> asyncpg.Record:
        """Run `sql` (an UPDATE … RETURNING whose WHERE is `job_id = $1 AND attempt = $2 AND state =
        'running'`); StaleAttempt naming the current holder when it changed nothing."""
        async def write(conn: Conn) -> asyncpg.Record | None:
            return await conn.fetchrow(sql, job_id, attempt, *args)

        row = await self.db.run(write)
        if row is not None:
            return row
        now = await self.db.run(lambda conn: conn.fetchrow(
            "SELECT attempt, state, box FROM jobs WHERE job_id = $1", job_id), retry=True)
        if now is None:
            raise StaleAttempt(job_id, attempt, None, None, None)
        raise StaleAttempt(job_id, attempt, now["attempt"], now["state"], now["box"])

    async def renew(self, job_id: str, attempt: int) -> float:
        """Extend the lease by `lease_seconds` from now; returns its new end."""
        row = await self._fenced(job_id, attempt, "UPDATE jobs SET lease_until = sai_now() + $3 WHERE job_id = $1 "
                                 "AND attempt = $2 AND state = 'running' RETURNING lease_until", self.lease_seconds)
        return float(row["lease_until"])

    async def renew_many(self, held: Sequence[tuple[str, int]]) -> list[str]:
        """Extend the leases of every (job_id, attempt) held, in one statement; returns the job ids
        whose attempt is no longer current (the caller stops their work: another box has them)."""
        return (await self.renew_held(held))[0]

    async def renew_held(self, held: Sequence[tuple[str, int]]) -> tuple[list[str], dict[str, str]]:
        """renew_many's renewal, and the cancels other boxes asked for the attempts held (job id ->
        who asked, request_cancel); a request made for an earlier attempt of a job is not returned."""
        if not held:
            return [], {}
        ids, attempts = [job_id for job_id, _ in held], [attempt for _, attempt in held]
        rows = await self.db.run(lambda conn: conn.fetch(
            "UPDATE jobs SET lease_until = sai_now() + $3 FROM unnest($1::text[], $2::int[]) AS h(job_id, attempt) "
            "WHERE jobs.job_id = h.job_id AND jobs.attempt = h.attempt AND jobs.state = 'running' "
            "RETURNING jobs.job_id, CASE WHEN jobs.cancel_attempt = h.attempt THEN jobs.cancel_by END AS cancel_by",
            ids, attempts, self.lease_seconds))
        renewed = {row["job_id"] for row in rows}
        cancels = {row["job_id"]: row["cancel_by"] for row in rows if row["cancel_by"] is not None}
        return [job_id for job_id in ids if job_id not in renewed], cancels

    async def request_cancel(self, job_id: str, attempt: int, by: str) -> bool:
        """Ask the box running `attempt` of the job to cancel it (it reads the request when it next
        renews its leases, renew_held, at once when it hears CANCEL_CHANNEL); False when that attempt
        is no longer running."""
        asked = await self.db.run(lambda conn: conn.fetchval(
            "WITH asked AS (UPDATE jobs SET cancel_by = $3, cancel_attempt = attempt WHERE job_id = $1 "
            "AND attempt = $2 AND state = 'running' RETURNING box) "
            "SELECT count(pg_notify($4, box)) FROM asked", job_id, attempt, by, CANCEL_CHANNEL), retry=True)
        return bool(asked)

    async def progress(self, job_id: str, attempt: int, progress: float) -> None:
        await self._fenced(job_id, attempt, "UPDATE jobs SET progress = $3 WHERE job_id = $1 AND attempt = $2 "
                           "AND state = 'running' RETURNING job_id", progress)

    async def finish(self, job_id: str, attempt: int, state: str, *, outputs: list[dict[str, Any]] | None = None,
                     error: str | None = None, model_family: str = "", weights_sha256: str = "") -> FleetJob:
        """End the attempt: succeeded, failed or cancelled, with its outputs or error."""
        if state not in FINISHED:
            raise ValueError(f"{state!r} is not a finished state ({', '.join(sorted(FINISHED))})")
        row = await self._fenced(
            job_id, attempt,
            "UPDATE jobs SET state = $3, outputs = $4::jsonb, error = $5, model_family = $6, weights_sha256 = $7, "
            "progress = CASE WHEN $3 = 'succeeded' THEN 1 ELSE progress END, finished_at = sai_now(), "
            "lease_until = NULL WHERE job_id = $1 AND attempt = $2 AND state = 'running' RETURNING *",
            state, _json(outputs or []), error, model_family, weights_sha256)
        return self._job(row)

    async def requeue(self, job_id: str, attempt: int, *, error: str | None = None) -> FleetJob:
        """Give the job back to the queue (this box stops, its batch crashed): a new attempt, so
        nothing this holder writes afterwards lands; failed instead once `max_attempts` runs began,
        cancelled instead when a cancel was asked for this attempt (request_cancel) and not yet acted on."""
        row = await self._fenced(
            job_id, attempt,
            "UPDATE jobs SET attempt = attempt + 1, lease_until = NULL, progress = 0, "
            "state = CASE WHEN cancel_attempt = attempt THEN 'cancelled' WHEN attempts >= $3 THEN 'failed' "
            "ELSE 'queued' END, "
            "started_at = CASE WHEN cancel_attempt = attempt OR attempts >= $3 THEN started_at END, "
            "finished_at = CASE WHEN cancel_attempt = attempt OR attempts >= $3 THEN sai_now() END, "
            "error = CASE WHEN cancel_attempt = attempt THEN format('cancelled by %s while running', cancel_by) "
            "ELSE $4 END "
            "WHERE job_id = $1 AND attempt = $2 AND state = 'running' RETURNING *",
            self.max_attempts, error)
        if row["state"] == QUEUED:
            await self.db.run(lambda conn: conn.execute("SELECT pg_notify($1, $2)", NOTIFY_CHANNEL, row["model_id"]))
        return self._job(row)

    async def cancel_queued(self, job_id: str, reason: str = "cancelled") -> bool:
        """Cancel a job nobody holds (queued); False when it is running or finished."""
        status = await self.db.run(lambda conn: conn.execute(
            "UPDATE jobs SET state = 'cancelled', error = $2, finished_at = sai_now() "
            "WHERE job_id = $1 AND state = 'queued'", job_id, reason))
        return status.endswith(" 1")

    async def reap(self) -> list[Reaped]:
        """Put every job whose lease has expired back in the queue under a new attempt (failed once
        `max_attempts` runs began, cancelled when a cancel was asked for the attempt that expired).
        Any box may run it at any time, concurrently with others: a job
        is reaped once (rows are locked, and a second reaper skips or no longer sees them)."""
        rows = await self.db.run(lambda conn: conn.fetch(REAP_SQL, self.max_attempts))
        reaped = [Reaped(row["job_id"], row["state"], row["box"], row["attempt"]) for row in rows]
        if any(r.state == QUEUED for r in reaped):
            await self.db.run(lambda conn: conn.execute("SELECT pg_notify($1, '')", NOTIFY_CHANNEL))
        return reaped


__all__ = ["CANCEL_CHANNEL", "FAILED", "NOTIFY_CHANNEL", "QUEUED", "RUNNING", "FleetJob", "FleetQueue", "Reaped"]
