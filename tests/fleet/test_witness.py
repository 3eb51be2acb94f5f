"""Audit logs witness each other (daemon/fleet/witness.py) on a real PostgreSQL with real audit logs:
three boxes publish, check and cosign each other's checkpoints; a box whose log is replaced by a
shorter or a different one is named by the others; `verify` against the witnessed checkpoints."""

from __future__ import annotations

import base64
import hashlib
import shutil
import struct
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from daemon.alarms import ALARM
from daemon.audit import checkpoint as cpmod
from daemon.audit.log import AuditLog
from daemon.events import EventBus
from daemon.fleet import rotation
from daemon.fleet.checkpoints import CheckpointBoard
from daemon.fleet.connection import Database
from daemon.fleet.witness import Witness, WitnessStateError, fork_alarm, witnessed_notes

ACTOR = {"uid": 1000, "user": "alice", "pid": 4242}


@dataclass
class Box:
    name: str
    key: Ed25519PrivateKey
    dir: Path
    audit: AuditLog
    witness: Witness
    forks: list[tuple[str, str, dict[str, Any]]] = field(default_factory=list)

    async def add(self, n: int, tag: str = "job") -> str:
        """n entries, then a checkpoint over them (the note)."""
        for i in range(n):
            await self.audit.append(ACTOR, "job.submit", f"{tag}-{i}", {"n": i})
        return await self.audit.checkpoint()


async def open_log(directory: Path, name: str, key: Ed25519PrivateKey) -> AuditLog:
    return await AuditLog.open(directory / "audit.db", key, f"{name}/sai-audit", checkpoint_every_entries=10_000,
                               checkpoint_every_seconds=3600.0)


@pytest.fixture
async def fleet(fleet_url: str, tmp_path: Path) -> AsyncIterator[dict[str, Box]]:
    """Boxes a, b, c: each its own audit log, signing key, witness state and database pool."""
    boxes: dict[str, Box] = {}
    pools: list[Database] = []
    for name in ("a", "b", "c"):
        db = await Database.open(fleet_url)
        pools.append(db)
        key = Ed25519PrivateKey.generate()
        directory = tmp_path / name
        directory.mkdir()
        audit = await open_log(directory, name, key)
        forks: list[tuple[str, str, dict[str, Any]]] = []

        async def told(box: str, reason: str, details: dict[str, Any], forks: list[Any] = forks) -> None:
            forks.append((box, reason, details))

        witness = Witness(CheckpointBoard(db), audit, box=name, signing_key=lambda key=key: key,
                          state_path=directory / "fleet-witness.json", on_fork=told)
        boxes[name] = Box(name, key, directory, audit, witness, forks)
    yield boxes
    for box in boxes.values():
        await box.witness.audit.close()
    for db in pools:
        await db.close()


async def replace_log(box: Box, key: Ed25519PrivateKey | None = None) -> None:
    """The forgery: the box's audit store replaced by a new log of the same origin (under its own
    key unless `key`), which its witness then publishes from."""
    await box.audit.close()
    shutil.move(box.dir / "audit.db", box.dir / "audit.db.genuine")
    for suffix in ("-wal", "-shm"):
        (box.dir / f"audit.db{suffix}").unlink(missing_ok=True)
    box.audit = box.witness.audit = await open_log(box.dir, box.name, key or box.key)
    if key is not None:
        box.witness.signing_key = lambda: key


async def beat_all(boxes: dict[str, Box]) -> None:
    """Every box publishes, then every box witnesses (two heartbeats of the fleet)."""
    for box in boxes.values():
        await box.witness.publish()
    for box in boxes.values():
        await box.witness.witness()


def check_cosignature(line: str, name: str, public: Ed25519PublicKey, note: str) -> int:
    """The C2SP tlog-cosignature v1 layout, checked here independently of daemon.fleet.cosignature."""
    dash, key_name, blob_text = line.split(" ")
    assert dash == "\u2014" and key_name == name
    blob = base64.b64decode(blob_text)
    raw = public.public_bytes_raw()
    assert len(blob) == 76 and blob[:4] == hashlib.sha256(name.encode() + b"\n\x04" + raw).digest()[:4]
    (timestamp,) = struct.unpack(">Q", blob[4:12])
    body = note[: note.index("\n\n") + 1]
    public.verify(blob[12:], b"cosignature/v1\ntime %d\n" % timestamp + body.encode())  # raises if wrong
    return int(timestamp)


async def test_three_boxes_cosign_each_others_checkpoints(fleet: dict[str, Box]) -> None:
    for box in fleet.values():
        await box.add(3)
    await beat_all(fleet)
    for box in fleet.values():
        await box.add(5)  # a second checkpoint each: the witnesses check the consistency proof
    await beat_all(fleet)
    board = fleet["a"].witness.board
    for box in fleet.values():
        cosigned = await board.cosigned(box.name)
        assert [cp.tree_size for cp, _ in cosigned] == [4, 9]  # audit.init + 3, then + 5
        assert cosigned[1][0].proof_from == 4 and cosigned[1][0].proof
        for cp, cosignatures in cosigned:
            assert sorted(c.witness for c in cosignatures) == sorted(set(fleet) - {box.name})
            for c in cosignatures:
                witness = fleet[c.witness]
                check_cosignature(c.line, f"{c.witness}/sai-witness", witness.key.public_key(), cp.note)
                assert c.public_key == witness.key.public_key().public_bytes_raw()
        assert box.forks == []
        notes = await witnessed_notes(board, box.name)
        result = await box.audit.verify(also=notes)
        assert result["ok"] and len(notes) == 2 and "witnessed by" in notes[0][1]
    a = fleet["a"]
    state = (a.dir / "fleet-witness.json").read_text()
    assert '"size": 9' in state and "sai-fleet-witness/1" in state
    restarted = Witness(board, a.audit, box="a", signing_key=lambda: a.key, state_path=a.dir / "fleet-witness.json",
                        on_fork=a.witness.on_fork)
    assert await restarted.witness() == []  # what it witnessed was kept: nothing is examined twice
    await fleet["b"].add(1)
    await fleet["b"].witness.publish()
    assert [problem for _, problem in await restarted.witness()] == [None] and a.forks == []
    (a.dir / "fleet-witness.json").write_text("{not json")
    with pytest.raises(WitnessStateError, match="is not a fleet witness state .*move it away to witness afresh"):
        Witness(board, a.audit, box="a", signing_key=lambda: a.key, state_path=a.dir / "fleet-witness.json",
                on_fork=a.witness.on_fork)


async def test_a_rolled_back_log_is_named_by_the_witnesses(fleet: dict[str, Box]) -> None:
    for box in fleet.values():
        await box.add(6)
    await beat_all(fleet)
    b = fleet["b"]
    await replace_log(b)  # a shorter log under the same key and origin
    await b.add(2, tag="forged")
    await beat_all(fleet)
    for name in ("a", "c"):
        [(box, reason, details)] = fleet[name].forks
        assert box == "b" and "rolled back" in reason and "covers 3 entries, after 7 entries" in reason
        assert details["witnessed_size"] == 7 and details["tree_size"] == 3
    assert fleet["b"].forks == [] and fleet["a"].forks[0][0] == "b"
    await b.add(10, tag="more")  # it grows past what was witnessed: still no extension of it
    await beat_all(fleet)
    assert len(fleet["a"].forks) == 1  # told once; the box stays named
    cosigned = await fleet["a"].witness.board.cosigned("b")
    assert [cp.tree_size for cp, _ in cosigned] == [7]  # nothing of the forged log was cosigned
    result = await b.audit.verify(also=await witnessed_notes(fleet["a"].witness.board, "b"))
    assert not result["ok"] and "witnessed by a, c" in result["reason"], result


async def test_a_forked_log_of_more_entries_fails_the_consistency_proof(fleet: dict[str, Box]) -> None:
    await fleet["a"].add(4)
    await fleet["c"].add(1)
    await beat_all(fleet)
    a = fleet["a"]
    await replace_log(a)
    await a.add(9, tag="rewritten")  # 10 entries: larger than the 5 witnessed, another history
    published = await a.witness.publish()
    assert published is not None and published.proof_from == 5  # an honest proof from its own new log
    await fleet["c"].witness.witness()
    [(box, reason, _)] = fleet["c"].forks
    assert box == "a" and "forked or rewritten" in reason and "consistency proof fails" in reason


async def test_a_checkpoint_under_another_key_is_refused_after_the_first_one_pinned(fleet: dict[str, Box]) -> None:
    c = fleet["c"]
    await c.add(2)
    await beat_all(fleet)
    await replace_log(c, Ed25519PrivateKey.generate())
    await c.add(5)
    await beat_all(fleet)
    [(box, reason, _)] = fleet["a"].forks
    assert box == "c" and "not signed by the key pinned for it at first sight" in reason


async def test_the_fork_alarm_is_a_critical_alert_naming_the_box_and_an_audit_entry(tmp_path: Path) -> None:
    bus = EventBus()
    alarms: list[dict[str, Any]] = []
    bus.listen({ALARM}, lambda topic, data: alarms.append(data))
    recorded: list[tuple[Any, ...]] = []

    async def record(peer: None, action: str, subject: str, details: dict[str, Any]) -> None:
        recorded.append((peer, action, subject, details))

    await fork_alarm(bus, record)("gpu-b", "box 'gpu-b': its audit log was rolled back", {"tree_size": 3})
    assert alarms == [{"key": "fleet.audit_fork.gpu-b", "message": "box 'gpu-b': its audit log was rolled back",
                       "details": {"tree_size": 3}, "audited": True}]
    assert recorded == [(None, "fleet.audit_fork", "gpu-b",
                         {"tree_size": 3, "reason": "box 'gpu-b': its audit log was rolled back"})]


def test_a_cosignature_made_here_reads_as_the_spec_lays_it_out() -> None:
    from daemon.fleet import cosignature

    key = Ed25519PrivateKey.generate()
    note = cpmod.sign("example.com/log", 20852163, bytes(32), key)
    body = cpmod.parse(note).text
    line = cosignature.cosign("witness.example.com/w1", key, body, 1679315147)
    assert check_cosignature(line, "witness.example.com/w1", key.public_key(), note) == 1679315147
    assert cosignature.verify(line, "witness.example.com/w1", key.public_key().public_bytes_raw(), body) == 1679315147
    with pytest.raises(cosignature.CosignatureError, match="does not verify"):
        cosignature.verify(line, "witness.example.com/w1", key.public_key().public_bytes_raw(), body.replace("2", "3"))
    with pytest.raises(cosignature.CosignatureError, match="key ID"):
        cosignature.verify(line, "witness.example.com/w1",
                           Ed25519PrivateKey.generate().public_key().public_bytes_raw(), body)


async def test_a_key_rotation_is_followed_through_the_rotation_entry_the_old_key_signed(
        fleet: dict[str, Box]) -> None:
    b = fleet["b"]
    await b.add(3)
    await beat_all(fleet)
    new_key = Ed25519PrivateKey.generate()
    await b.audit.rotate_signing_key(new_key, ACTOR)  # as keys.rotate does; the log announces the new key
    b.key = new_key
    b.witness.signing_key = lambda: new_key
    await b.add(4)
    await beat_all(fleet)
    board = b.witness.board
    published = await board.last_published("b")
    assert published is not None and published.rotation and published.public_key == new_key.public_key().public_bytes_raw()
    assert fleet["a"].forks == [] and fleet["c"].forks == []
    cosigned = await board.cosigned("b")
    assert sorted(c.witness for c in cosigned[-1][1]) == ["a", "c"]  # the new key's checkpoint is cosigned
    await b.add(2)  # the next one needs no rotation: the witnesses pinned the new key
    await beat_all(fleet)
    latest = await board.last_published("b")
    assert latest is not None and latest.rotation is None and fleet["a"].forks == []
    assert [len(c) for _, c in await board.cosigned("b")][-1] == 2

    chain, root = published.rotation, cpmod.parse(published.note).root
    old = fleet["a"].witness.seen["b"]  # pinned the new key by now; the chain starts at the old one
    assert old.key == base64.b64encode(new_key.public_key().public_bytes_raw()).decode()
    first = cosigned[0][0].public_key
    assert rotation.follow(chain, first, published.tree_size, root) == new_key.public_key().public_bytes_raw()
    forged = [{**chain[0], "signature": "00" * 64}]
    with pytest.raises(ValueError, match="not signed by the key it replaces"):
        rotation.follow(forged, first, published.tree_size, root)
    with pytest.raises(ValueError, match="not in the checkpoint's tree"):
        rotation.follow(chain, first, published.tree_size, bytes(32))
    with pytest.raises(ValueError, match="not signed by the key it replaces"):
        rotation.follow(chain, Ed25519PrivateKey.generate().public_key().public_bytes_raw(), published.tree_size, root)
