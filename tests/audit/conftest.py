"""Audit fixtures: a signing key and a template log (copied per test for tampering)."""

from __future__ import annotations

import asyncio
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from tests.audit.audit_helpers import Served, build


@pytest.fixture(scope="session")
def signing_key() -> Ed25519PrivateKey:
    return Ed25519PrivateKey.generate()


@pytest.fixture(scope="session")
def template_log(tmp_path_factory: pytest.TempPathFactory, signing_key: Ed25519PrivateKey) -> Path:
    """Entries 0..45 (entry 0 is audit.init), checkpoints at 1, 11, 21, 31, 41 and 46, closed."""
    path = tmp_path_factory.mktemp("template") / "audit.db"

    async def make() -> None:
        log = await build(path, signing_key, 45)
        await log.close()

    asyncio.run(make())
    return path


@pytest.fixture
def log_copy(template_log: Path, tmp_path: Path) -> Path:
    target = tmp_path / "audit.db"
    shutil.copy(template_log, target)
    return target


@pytest.fixture
def served(tmp_path: Path, signing_key: Ed25519PrivateKey) -> Iterator[Served]:
    s = Served(tmp_path / "audit.db", signing_key)
    yield s
    s.stop()
