"""The box registry: every daemon of the fleet says who it is and that it is alive.

A box is its installation name (`[daemon] installation`). Its row tells the others which models
it holds, its devices, how many workers it has and how many are free, and how to reach its socket
(the socket path and how to get to it, e.g. over SSH, for outputs that stay on the box that made them). The
heartbeat is the database's clock, so its age means the same from every box.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import asyncpg

from daemon.fleet.connection import Conn, Database


@dataclass(frozen=True)
class BoxInfo:
    """What a box tells the fleet about itself at each heartbeat."""

    name: str
    socket: str = ""
    reach: str = ""
    """How others reach this box's socket (`[fleet] reach`: an ssh command, a forwarded path)."""
    version: str = ""
    models: Sequence[str] = ()
    devices: Sequence[dict[str, Any]] = field(default_factory=tuple)
    workers: int = 0
    free_workers: int = 0
    health: dict[str, Any] = field(default_factory=dict)
    """What the console's fleet pane shows of the box: `memory` (host, used/total bytes), `gpu_memory`
    (per GPU), `alerts` (its open alerts by severity); a box's alerts and metrics stay in its own SQLite."""


UPSERT_SQL = """
INSERT INTO boxes (name, socket, reach, version, models, devices, workers, free_workers, health, started_at,
                   heartbeat_at)
VALUES ($1, $2, $3, $4, $5, $6::jsonb, $7, $8, $9::jsonb, sai_now(), sai_now())
ON CONFLICT (name) DO UPDATE SET socket = excluded.socket, reach = excluded.reach, version = excluded.version,
    models = excluded.models, devices = excluded.devices, workers = excluded.workers,
    free_workers = excluded.free_workers, health = excluded.health, heartbeat_at = excluded.heartbeat_at{restart}"""

STATUS_SQL = """
SELECT b.*, sai_now() - b.heartbeat_at AS heartbeat_age,
       (SELECT count(*) FROM jobs j WHERE j.box = b.name AND j.state = 'running') AS running
FROM boxes b ORDER BY b.name"""


class BoxRegistry:
    def __init__(self, db: Database) -> None:
        self.db = db

    async def _upsert(self, info: BoxInfo, *, starting: bool) -> None:
        sql = UPSERT_SQL.format(restart=", started_at = excluded.started_at" if starting else "")
        args = (info.name, info.socket, info.reach, info.version, list(info.models), json.dumps(list(info.devices)),
                info.workers, info.free_workers, json.dumps(info.health))

        async def write(conn: Conn) -> None:
            await conn.execute(sql, *args)

        await self.db.run(write, retry=True)  # an upsert of the same values: safe to repeat

    async def register(self, info: BoxInfo) -> None:
        """This box joins (or joins again after a restart: its row is taken over, started now)."""
        await self._upsert(info, starting=True)

    async def heartbeat(self, info: BoxInfo) -> None:
        await self._upsert(info, starting=False)

    async def leave(self, name: str) -> None:
        """Remove the box's row (an orderly stop; a box that dies just stops heartbeating)."""
        await self.db.run(lambda conn: conn.execute("DELETE FROM boxes WHERE name = $1", name))

    async def find(self, name: str) -> dict[str, Any] | None:
        """Box `name`'s socket, reach and heartbeat age; None when it is not registered (it left, or
        never joined under that name)."""
        async def read(conn: Conn) -> asyncpg.Record | None:
            return await conn.fetchrow("SELECT name, socket, reach, sai_now() - heartbeat_at AS heartbeat_age "
                                       "FROM boxes WHERE name = $1", name)

        row = await self.db.run(read, retry=True)
        if row is None:
            return None
        return {"name": row["name"], "socket": row["socket"] or None, "reach": row["reach"] or None,
                "heartbeat_age": round(max(0.0, float(row["heartbeat_age"])), 3)}

    async def status(self) -> dict[str, Any]:
        """`fleet.status`'s data: every box with its heartbeat age, load and models, and the
        fleet's queue counts."""
        async def read(conn: Conn) -> tuple[list[asyncpg.Record], list[asyncpg.Record]]:
            async with conn.transaction(readonly=True, isolation="repeatable_read"):
                return (await conn.fetch(STATUS_SQL),
                        await conn.fetch("SELECT state, count(*) AS n FROM jobs "
                                         "WHERE state IN ('queued', 'running') GROUP BY state"))

        boxes, counts = await self.db.run(read, retry=True)
        by_state = {row["state"]: int(row["n"]) for row in counts}
        return {
            "boxes": [{
                "name": row["name"], "socket": row["socket"], "reach": row["reach"] or None, "version": row["version"],
                "models": list(row["models"]), "devices": json.loads(row["devices"]),
                "workers": row["workers"], "free_workers": row["free_workers"], "running": int(row["running"]),
                "heartbeat_age": round(max(0.0, float(row["heartbeat_age"])), 3),
                **_health(json.loads(row["health"])),
            } for row in boxes],
            "queued": by_state.get("queued", 0),
            "running": by_state.get("running", 0),
        }


def _health(health: dict[str, Any]) -> dict[str, Any]:
    """A box's `memory`, `gpu_memory` and `alerts` as its last heartbeat reported them (`memory` null
    until its monitor has sampled once, `alerts` null with the monitor off)."""
    return {"memory": health.get("memory"), "gpu_memory": health.get("gpu_memory") or [],
            "alerts": health.get("alerts")}
