"""The fleet database's schema: created by the daemon, re-opened as it is, a newer one refused."""

from __future__ import annotations

from urllib.parse import urlsplit

import asyncpg
import pytest

from daemon.fleet.boxes import BoxInfo, BoxRegistry
from daemon.fleet.checkpoints import CheckpointBoard
from daemon.fleet.connection import Database
from daemon.fleet.errors import FleetUnavailable, MigrationRefused, SchemaTooNew
from daemon.fleet.migrations import MIGRATIONS, SCHEMA_VERSION, migrate
from tests.fleet.conftest import QueueFactory, make_job
from tests.fleet.pg_helpers import PgCluster


async def _versions(url: str) -> list[int]:
    conn = await asyncpg.connect(url)
    try:
        return [row["version"] for row in await conn.fetch("SELECT version FROM schema_version ORDER BY version")]
    finally:
        await conn.close()


async def test_created_then_reopened_unchanged(fleet_url: str) -> None:
    first = await Database.open(fleet_url)
    await first.close()
    assert await _versions(fleet_url) == list(range(1, SCHEMA_VERSION + 1))
    second = await Database.open(fleet_url)  # tables exist: nothing is applied twice
    try:
        assert await second.run(lambda conn: conn.fetchval("SELECT count(*) FROM jobs")) == 0
    finally:
        await second.close()
    assert await _versions(fleet_url) == list(range(1, SCHEMA_VERSION + 1))


async def test_a_later_version_is_applied_on_top(fleet_url: str) -> None:
    db = await Database.open(fleet_url)
    try:
        later = {**MIGRATIONS, SCHEMA_VERSION + 1: ("ALTER TABLE boxes ADD COLUMN note text NOT NULL DEFAULT ''",)}
        assert await db.run(lambda conn: migrate(conn, later)) == SCHEMA_VERSION + 1
        assert await db.run(lambda conn: conn.fetchval("SELECT count(*) FROM boxes WHERE note = ''")) == 0
    finally:
        await db.close()
    assert await _versions(fleet_url) == list(range(1, SCHEMA_VERSION + 2))


async def test_newer_schema_is_refused_naming_both_versions(fleet_url: str) -> None:
    db = await Database.open(fleet_url)
    await db.run(lambda conn: conn.execute("INSERT INTO schema_version (version) VALUES ($1)", SCHEMA_VERSION + 4))
    await db.close()
    with pytest.raises(SchemaTooNew) as refused:
        await Database.open(fleet_url)
    message = str(refused.value)
    assert f"version {SCHEMA_VERSION + 4}" in message and f"({SCHEMA_VERSION})" in message
    assert "upgrade this daemon" in message


async def test_unreachable_database_is_named_without_its_password(tmp_path: object) -> None:
    url = "postgresql://sai:s3cret@/fleet?host=/nonexistent-sai-dir&port=5999"
    with pytest.raises(FleetUnavailable) as refused:
        await Database.open(url, connect_timeout=2)
    assert "s3cret" not in str(refused.value) and "/nonexistent-sai-dir" in str(refused.value)


async def test_a_box_role_with_only_its_grants_works_but_cannot_migrate(
        fleet_url: str, pg_cluster: PgCluster, open_queue: QueueFactory) -> None:
    database = urlsplit(fleet_url).path.lstrip("/")
    pg_cluster.psql("CREATE ROLE box_plain LOGIN", database)
    box_url = fleet_url.replace("sai@", "box_plain@")
    with pytest.raises(MigrationRefused, match=f"refused its migration to schema version {SCHEMA_VERSION}: "
                                               "permission denied"):
        await Database.open(box_url)
    await (await open_queue()).db.close()  # the owner migrates
    pg_cluster.psql("GRANT SELECT, INSERT, UPDATE ON jobs, boxes TO box_plain; GRANT DELETE ON boxes TO box_plain; "
                    "GRANT SELECT ON schema_version TO box_plain; "
                    "GRANT SELECT, INSERT ON audit_checkpoints, audit_cosignatures TO box_plain", database)
    queue = await open_queue("a", url=box_url, lease_seconds=0.2)
    await queue.submit(make_job())
    held = await queue.claim("cpu0")
    assert held is not None
    await queue.renew(held.job_id, held.attempt)
    assert await queue.request_cancel(held.job_id, held.attempt, "alice on box b")  # a cancel asked elsewhere
    assert await queue.renew_held([(held.job_id, held.attempt)]) == ([], {held.job_id: "alice on box b"})
    await queue.finish(held.job_id, held.attempt, "succeeded")
    registry = BoxRegistry(queue.db)
    await registry.register(BoxInfo("a"))
    assert [box["name"] for box in (await registry.status())["boxes"]] == ["a"]
    await registry.leave("a")
    assert await queue.reap() == []
    board = CheckpointBoard(queue.db)  # what the audit witness writes and reads (daemon.fleet.witness)
    seq = await board.publish("b", 1, "note\n", bytes(32), None, [])
    assert [cp.seq for cp in await board.since("a", {})] == [seq]
    await board.cosign(seq, "a", "a/sai-witness", bytes(32), "line")
    assert [c.witness for _, cosigned in await board.cosigned("b") for c in cosigned] == ["a"]
    pg_cluster.psql("DROP OWNED BY box_plain; DROP ROLE box_plain", database)
