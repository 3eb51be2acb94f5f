"""daemon.status: the daemon's state as a client sees it (queue, worker, uptime, stopping)."""

from __future__ import annotations

from typing import Any

from daemon.api.registry import CallContext, Role, method


@method("daemon.status", role=Role.VIEWER)
async def status(ctx: CallContext) -> dict[str, Any]:
    return ctx.daemon.status(ctx.peer)
