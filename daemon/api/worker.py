"""worker.restart."""

from __future__ import annotations

from typing import Any

from daemon.api.registry import CallContext, Role, method


@method("worker.restart", role=Role.ADMIN)
async def restart(ctx: CallContext, reason: str = "") -> dict[str, Any]:
    """Restart the worker after its current batch; also clears a crash-loop halt."""
    why = f"requested by {ctx.peer.user}" + (f": {reason}" if reason else "")
    await ctx.daemon.audit_action(ctx.peer, "worker.restart", "", {"reason": reason})
    return ctx.daemon.dispatcher.request_restart(why)
