"""fleet.status: every box of the fleet (heartbeat age, load, models) and the fleet's queue."""

from __future__ import annotations

from typing import Any

from daemon.api.registry import CallContext, Role, method
from daemon.fleet.errors import FleetUnavailable
from daemon.protocol import UNAVAILABLE, RpcError


@method("fleet.status", role=Role.VIEWER)
async def status(ctx: CallContext) -> dict[str, Any]:
    """On a single box (`[fleet] database` empty): `configured` false and no boxes. -32010 while the
    fleet database cannot be reached."""
    fleet = ctx.daemon.fleet
    if fleet is None:
        return {"configured": False, "box": None, "boxes": [], "queued": None, "running": None}
    try:
        return await fleet.status()
    except FleetUnavailable as exc:
        raise RpcError(UNAVAILABLE, str(exc), {"reason": "fleet_database"}) from exc
