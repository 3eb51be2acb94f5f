"""The fleet database's schema, created and migrated by the daemons themselves.

`schema_version` holds one row per applied version. Every daemon migrates at start, under a
transaction-scoped advisory lock, so boxes starting together apply each step once; a database
a newer daemon migrated is refused (SchemaTooNew) rather than misread.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

import asyncpg

from daemon.fleet.errors import MigrationRefused, SchemaTooNew

if TYPE_CHECKING:
    from daemon.fleet.connection import Conn

log = logging.getLogger("sai.fleet")

MIGRATION_LOCK = 0x5A1F1EE7
"""The advisory lock key daemons take while migrating (any number no other application uses)."""

MIGRATIONS: dict[int, tuple[str, ...]] = {
    1: (
        """CREATE FUNCTION sai_now() RETURNS double precision LANGUAGE sql VOLATILE
           AS $$ SELECT extract(epoch FROM clock_timestamp())::double precision $$""",
        """CREATE TABLE jobs (
            seq bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
            job_id text NOT NULL UNIQUE,
            state text NOT NULL,
            priority integer NOT NULL,
            params jsonb NOT NULL,
            prompt bytea NOT NULL,
            negative_prompt bytea NOT NULL,
            "user" text NOT NULL,
            uid bigint NOT NULL,
            client_token text,
            created_at double precision NOT NULL,
            enqueued_at double precision NOT NULL,
            started_at double precision,
            finished_at double precision,
            progress double precision NOT NULL DEFAULT 0,
            error text,
            outputs jsonb NOT NULL DEFAULT '[]',
            attempts integer NOT NULL DEFAULT 0,
            risk double precision NOT NULL DEFAULT 0,
            warnings jsonb NOT NULL DEFAULT '[]',
            model_id text NOT NULL DEFAULT '',
            model_family text NOT NULL DEFAULT '',
            weights_sha256 text NOT NULL DEFAULT '',
            worker text NOT NULL DEFAULT '',
            device text NOT NULL DEFAULT '',
            box text NOT NULL DEFAULT '',
            attempt integer NOT NULL DEFAULT 0,
            lease_until double precision
        )""",
        "CREATE UNIQUE INDEX jobs_client_token ON jobs (uid, client_token) WHERE client_token IS NOT NULL",
        "CREATE INDEX jobs_queued ON jobs (priority DESC, seq) WHERE state = 'queued'",
        "CREATE INDEX jobs_leases ON jobs (lease_until) WHERE state = 'running'",
        "CREATE INDEX jobs_finished ON jobs (state, seq)",
        """CREATE TABLE boxes (
            name text PRIMARY KEY,
            socket text NOT NULL DEFAULT '',
            reach text NOT NULL DEFAULT '',
            version text NOT NULL DEFAULT '',
            models text[] NOT NULL DEFAULT '{}',
            devices jsonb NOT NULL DEFAULT '[]',
            workers integer NOT NULL DEFAULT 0,
            free_workers integer NOT NULL DEFAULT 0,
            started_at double precision NOT NULL,
            heartbeat_at double precision NOT NULL
        )""",
    ),
    2: (
        # what the console's fleet pane shows of each box: host and GPU memory, open alerts
        "ALTER TABLE boxes ADD COLUMN health jsonb NOT NULL DEFAULT '{}'",
    ),
    3: (
        # audit logs witness each other (daemon/fleet/witness.py): each box's published checkpoints,
        # with the consistency proof from its previous one, and the other boxes' cosignatures
        """CREATE TABLE audit_checkpoints (
            seq bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
            box text NOT NULL,
            tree_size bigint NOT NULL,
            note text NOT NULL,
            public_key bytea NOT NULL,
            proof_from bigint,
            proof bytea[] NOT NULL DEFAULT '{}',
            published_at double precision NOT NULL
        )""",
        "CREATE INDEX audit_checkpoints_box ON audit_checkpoints (box, seq)",
        """CREATE TABLE audit_cosignatures (
            checkpoint bigint NOT NULL REFERENCES audit_checkpoints (seq),
            witness text NOT NULL,
            name text NOT NULL,
            public_key bytea NOT NULL,
            cosignature text NOT NULL,
            signed_at double precision NOT NULL,
            PRIMARY KEY (checkpoint, witness)
        )""",
    ),
    4: (
        # a checkpoint signed by a new key carries the rotation entries that authorise it (daemon/fleet/rotation.py)
        "ALTER TABLE audit_checkpoints ADD COLUMN rotation jsonb",
    ),
    5: (
        # a cancel asked on one box for a job another box runs (daemon/fleet/jobs.py request_cancel): who
        # asked, and the attempt it was asked for, so that only that run stops (a box role's UPDATE on jobs covers them)
        "ALTER TABLE jobs ADD COLUMN cancel_by text",
        "ALTER TABLE jobs ADD COLUMN cancel_attempt integer",
    ),
    6: (
        # a user is one person fleet-wide by login name (their uid may differ between machines): a
        # client_token retried through any box finds the first job by the user's name, not uid
        "DROP INDEX jobs_client_token",
        'CREATE UNIQUE INDEX jobs_client_token ON jobs ("user", client_token) WHERE client_token IS NOT NULL',
    ),
}
"""Statements that bring the database from the version before the key up to it."""
SCHEMA_VERSION = max(MIGRATIONS)


async def current_version(conn: Conn) -> int:
    """The database's schema version (0: never migrated)."""
    exists = await conn.fetchval("SELECT to_regclass('schema_version') IS NOT NULL")
    if not exists:
        return 0
    return int(await conn.fetchval("SELECT COALESCE(MAX(version), 0) FROM schema_version"))


async def migrate(conn: Conn, known: dict[int, tuple[str, ...]] | None = None) -> int:
    """Bring the database up to the newest version this code knows (`known`, for tests: MIGRATIONS),
    one version at a time in one transaction; returns the version it is at."""
    steps = MIGRATIONS if known is None else known
    newest = max(steps)
    try:
        async with conn.transaction():
            await conn.execute("SELECT pg_advisory_xact_lock($1)", MIGRATION_LOCK)
            version = await current_version(conn)
            if version > newest:
                raise SchemaTooNew(version, newest)
            if version == newest:  # nothing to create: a box's role needs no CREATE privilege
                return newest
            if version == 0:
                await conn.execute("CREATE TABLE IF NOT EXISTS schema_version ("
                                   "version integer PRIMARY KEY, applied_at timestamptz NOT NULL DEFAULT now())")
            for step in range(version + 1, newest + 1):
                for statement in steps[step]:
                    await conn.execute(statement)
                await conn.execute("INSERT INTO schema_version (version) VALUES ($1)", step)
                log.info("fleet database brought to schema version %d", step)
    except asyncpg.PostgresError as exc:
        if isinstance(exc, asyncpg.PostgresConnectionError | asyncpg.exceptions.OperatorInterventionError):
            raise
        raise MigrationRefused(f"the fleet database refused its migration to schema version {newest}: {exc} "
                               "(a role that may create tables must migrate it: docs/fleet.md)") from exc
    return newest
