"""The fleet's board of audit checkpoints: what each box publishes of its log, and who cosigned it.

`audit_checkpoints` holds every checkpoint a box published, in publishing order (`seq`), with the
box's audit public key and the consistency proof from the box's previous published checkpoint
(`proof_from` entries; NULL when it had none, or could not make one). A box publishes one at a
time, so its own rows are committed in `seq` order and a reader may keep one cursor per box.
`audit_cosignatures` holds one C2SP cosignature line per (checkpoint, witnessing box). Nothing
here is trusted by itself: witnesses check signatures and proofs (daemon.fleet.witness).
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import asyncpg

from daemon.fleet.connection import Conn, Database

NOTIFY_CHANNEL = "sai_audit"


@dataclass(frozen=True)
class Published:
    seq: int
    box: str
    tree_size: int
    note: str
    public_key: bytes
    proof_from: int | None
    proof: tuple[bytes, ...]
    rotation: list[dict[str, Any]] | None = None
    """With a checkpoint signed by another key than the box's previous one: the rotation entries
    from that key to this one (daemon.fleet.rotation)."""


@dataclass(frozen=True)
class Cosigned:
    """A cosignature as the board holds it (the witness's key comes from the board too)."""

    witness: str
    name: str
    public_key: bytes
    line: str


def _published(row: asyncpg.Record) -> Published:
    return Published(int(row["seq"]), row["box"], int(row["tree_size"]), row["note"], bytes(row["public_key"]),
                     None if row["proof_from"] is None else int(row["proof_from"]),
                     tuple(bytes(h) for h in row["proof"]),
                     None if row["rotation"] is None else json.loads(row["rotation"]))


SINCE_SQL = """
SELECT c.* FROM audit_checkpoints c
WHERE c.box <> $1
  AND c.seq > COALESCE((SELECT k.seq FROM unnest($2::text[], $3::bigint[]) AS k(box, seq) WHERE k.box = c.box), 0)
ORDER BY c.seq LIMIT $4"""


class CheckpointBoard:
    def __init__(self, db: Database) -> None:
        self.db = db

    async def last_published(self, box: str) -> Published | None:
        async def read(conn: Conn) -> asyncpg.Record | None:
            return await conn.fetchrow("SELECT * FROM audit_checkpoints WHERE box = $1 ORDER BY seq DESC LIMIT 1", box)

        row = await self.db.run(read, retry=True)
        return None if row is None else _published(row)

    async def publish(self, box: str, tree_size: int, note: str, public_key: bytes, proof_from: int | None,
                      proof: Sequence[bytes], rotation: list[dict[str, Any]] | None = None) -> int:
        """Add a checkpoint of `box` and wake the witnesses; its `seq`."""
        async def write(conn: Conn) -> int:
            async with conn.transaction():
                seq = await conn.fetchval(
                    "INSERT INTO audit_checkpoints (box, tree_size, note, public_key, proof_from, proof, rotation, "
                    "published_at) VALUES ($1, $2, $3, $4, $5, $6, $7::jsonb, sai_now()) RETURNING seq",
                    box, tree_size, note, public_key, proof_from, list(proof),
                    None if rotation is None else json.dumps(rotation))
                await conn.execute("SELECT pg_notify($1, $2)", NOTIFY_CHANNEL, box)
                return int(seq)

        return await self.db.run(write)

    async def since(self, box: str, cursors: Mapping[str, int], limit: int = 500) -> list[Published]:
        """Checkpoints of boxes other than `box` published after each box's cursor, in order."""
        names = list(cursors)

        async def read(conn: Conn) -> list[asyncpg.Record]:
            return await conn.fetch(SINCE_SQL, box, names, [cursors[n] for n in names], limit)

        return [_published(row) for row in await self.db.run(read, retry=True)]

    async def cosign(self, checkpoint: int, witness: str, name: str, public_key: bytes, line: str) -> None:
        async def write(conn: Conn) -> None:
            await conn.execute(
                "INSERT INTO audit_cosignatures (checkpoint, witness, name, public_key, cosignature, signed_at) "
                "VALUES ($1, $2, $3, $4, $5, sai_now()) ON CONFLICT DO NOTHING",
                checkpoint, witness, name, public_key, line)

        await self.db.run(write, retry=True)  # the same row again is nothing

    async def cosigned(self, box: str) -> list[tuple[Published, list[Cosigned]]]:
        """`box`'s published checkpoints that at least one other box cosigned, oldest first."""
        async def read(conn: Conn) -> list[asyncpg.Record]:
            return await conn.fetch(
                "SELECT c.*, s.witness, s.name, s.public_key AS witness_key, s.cosignature "
                "FROM audit_checkpoints c JOIN audit_cosignatures s ON s.checkpoint = c.seq "
                "WHERE c.box = $1 ORDER BY c.seq, s.witness", box)

        out: dict[int, tuple[Published, list[Cosigned]]] = {}
        for row in await self.db.run(read, retry=True):
            published = out.setdefault(int(row["seq"]), (_published(row), []))
            published[1].append(Cosigned(row["witness"], row["name"], bytes(row["witness_key"]), row["cosignature"]))
        return list(out.values())
