"""The fleet database's schema: created by the daemon, re-opened as it is, a newer one refused."""

from __future__ import annotations

import asyncpg
import pytest

from daemon.fleet.connection import Database
from daemon.fleet.errors import FleetUnavailable, SchemaTooNew
from daemon.fleet.migrations import MIGRATIONS, SCHEMA_VERSION, migrate


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
