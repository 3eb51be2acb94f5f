"""Opening a log against its anchor (daemon.audit.anchor.Trust): real logs in real SQLite files,
tampered as an attacker without the signing key can, each refused with the problem named."""

from __future__ import annotations

import json
import shutil
import sqlite3
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from daemon.audit import merkle
from daemon.audit.anchor import FILE_NAME, AuditTrustError, Trust
from daemon.audit.entry import canonical_json, key_id, leaf_hash
from daemon.audit.log import AuditLog
from daemon.audit.writer import Writer
from tests.audit.audit_helpers import ORIGIN, build, record, writable


def trust(directory: Path, *keys: Ed25519PrivateKey) -> Trust:
    raws = [k.public_key().public_bytes_raw() for k in keys]
    return Trust(directory / FILE_NAME, lambda: {key_id(raw): raw for raw in raws})


async def anchored_log(tmp_path: Path, key: Ed25519PrivateKey, count: int = 30) -> Path:
    path = tmp_path / "audit.db"
    log = await build(path, key, 0, trust=trust(tmp_path, key))
    for i in range(count):
        await log.append(*record(i))
    await log.close()
    assert json.loads((tmp_path / FILE_NAME).read_text())["size"] == count + 1
    return path


async def refused(path: Path, key: Ed25519PrivateKey, directory: Path) -> str:
    with pytest.raises(AuditTrustError) as caught:
        await AuditLog.open(path, key, ORIGIN, trust=trust(directory, key))
    return str(caught.value)


async def test_entries_replaced_with_a_consistent_tree_do_not_extend_the_anchor(tmp_path: Path,
                                                                               signing_key: Ed25519PrivateKey) -> None:
    """Entry 0 kept, entry 5 changed, its leaf hash and every tree node recomputed: the log is
    consistent with itself, but its tree at the anchored size has another root."""
    path = await anchored_log(tmp_path, signing_key)
    with writable(path) as conn:
        entry = json.loads(conn.execute("SELECT entry FROM audit_entries WHERE seq = 5").fetchone()[0])
        entry["subject"] = "job-9999"
        data = canonical_json(entry).encode()
        conn.execute("UPDATE audit_entries SET entry = ?, leaf_hash = ? WHERE seq = 5", (data.decode(), leaf_hash(data)))
        frontier, nodes = merkle.Frontier(), []
        for (leaf,) in conn.execute("SELECT leaf_hash FROM audit_entries ORDER BY seq").fetchall():
            nodes += frontier.append(leaf)
        conn.execute("DELETE FROM audit_nodes")
        conn.executemany("INSERT INTO audit_nodes VALUES (?, ?, ?)", nodes)
    reason = await refused(path, signing_key, tmp_path)
    assert "does not extend the checkpoint anchored in" in reason and "another root" in reason


async def test_a_rotation_signed_by_a_stranger_is_refused(tmp_path: Path, signing_key: Ed25519PrivateKey) -> None:
    path = await anchored_log(tmp_path, signing_key)
    size = json.loads((tmp_path / FILE_NAME).read_text())["size"]
    stranger = Ed25519PrivateKey.generate()
    w = Writer(path, stranger, ORIGIN, 1000)
    w.rotate(signing_key, {"uid": 0, "user": "root", "pid": 1})  # announces the real key, signed by the stranger
    w.close()
    reason = await refused(path, signing_key, tmp_path)
    assert f"entry {size} names signing key {key_id(stranger.public_key().public_bytes_raw())}" in reason


async def test_entries_after_the_anchor_are_checked_in_full(tmp_path: Path, signing_key: Ed25519PrivateKey) -> None:
    """As after a kill -9 before the next checkpoint: entries the anchor does not cover yet are
    checked one by one before the daemon signs a checkpoint over them."""
    path = await anchored_log(tmp_path, signing_key)
    stale = (tmp_path / FILE_NAME).read_bytes()
    log = await AuditLog.open(path, signing_key, ORIGIN)
    for i in range(5):
        await log.append(*record(100 + i))
    await log.close()
    (tmp_path / FILE_NAME).write_bytes(stale)
    shutil.copy(path, tmp_path / "good.db")
    with writable(path) as conn:
        conn.execute("UPDATE audit_entries SET signature = ? WHERE seq = 34", (bytes(64),))
    assert "entry 34: the signature does not verify" in await refused(path, signing_key, tmp_path)
    log = await AuditLog.open(tmp_path / "good.db", signing_key, ORIGIN, trust=trust(tmp_path, signing_key))
    await log.close()
    assert json.loads((tmp_path / FILE_NAME).read_text())["size"] == log.size


async def test_a_deleted_log_or_a_damaged_anchor_is_refused(tmp_path: Path, signing_key: Ed25519PrivateKey) -> None:
    path = await anchored_log(tmp_path, signing_key)
    shutil.move(path, tmp_path / "kept.db")
    assert "it is empty, but" in await refused(path, signing_key, tmp_path)
    shutil.move(tmp_path / "kept.db", path)
    anchor = json.loads((tmp_path / FILE_NAME).read_text())
    anchor["size"] -= 1
    (tmp_path / FILE_NAME).write_text(json.dumps(anchor))
    assert "does not agree with the checkpoint it holds" in await refused(path, signing_key, tmp_path)
    (tmp_path / FILE_NAME).write_text("{")
    assert "is damaged" in await refused(path, signing_key, tmp_path)


async def test_a_log_whose_first_key_the_key_store_lacks_is_not_anchored(tmp_path: Path,
                                                                         signing_key: Ed25519PrivateKey) -> None:
    path = tmp_path / "audit.db"
    await (await build(path, signing_key, 5)).close()  # a log from before anchors
    stranger = Ed25519PrivateKey.generate()
    with pytest.raises(AuditTrustError, match="missing from the key store"):
        await AuditLog.open(path, signing_key, ORIGIN, trust=trust(tmp_path, stranger))
    assert not (tmp_path / FILE_NAME).exists()
    log = await AuditLog.open(path, signing_key, ORIGIN, trust=trust(tmp_path, signing_key))
    assert [e["action"] for e in await log.tail(limit=1)] == ["audit.anchor"]
    await log.close()
    await (await AuditLog.open(path, signing_key, ORIGIN, trust=trust(tmp_path, signing_key))).close()
    with sqlite3.connect(str(path)) as conn:  # anchored once: the next start finds the anchor
        assert conn.execute("SELECT count(*) FROM audit_entries WHERE entry LIKE '%audit.anchor%'").fetchone()[0] == 1


async def test_an_anchor_that_cannot_be_written_is_reported_and_the_log_goes_on(
        tmp_path: Path, signing_key: Ed25519PrivateKey) -> None:
    raw = signing_key.public_key().public_bytes_raw()
    gone = Trust(tmp_path / "no-such-dir" / FILE_NAME, lambda: {key_id(raw): raw})
    log = await build(tmp_path / "audit.db", signing_key, 3, every=2, trust=gone)
    status = gone.status()
    assert status["size"] is None and f"cannot write {tmp_path / 'no-such-dir' / FILE_NAME}" in status["error"]
    (tmp_path / "no-such-dir").mkdir()
    await log.append(*record(3))  # the next checkpoint (every 2 entries) writes it
    await log.close()
    assert gone.status()["error"] is None and gone.status()["size"] == log.size
