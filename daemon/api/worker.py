"""worker.restart."""

from __future__ import annotations

from typing import Any

from daemon.api.registry import CallContext, Role, method


@method("worker.restart", role=Role.ADMIN)
async def restart(ctx: CallContext, reason: str = "", worker: str | None = None) -> dict[str, Any]:
    """Restart one worker (`worker`: its name, as daemon.status lists them) or, without one, every
    worker, each after its current batch; also clears a crash-loop halt. An unknown name: -32602."""
    dispatcher = ctx.daemon.dispatcher
    if worker is not None:
        dispatcher.lane(worker)  # -32602 before anything is audited
    why = f"requested by {ctx.peer.user}" + (f": {reason}" if reason else "")
    await ctx.daemon.audit_action(ctx.peer, "worker.restart", worker or "", {"reason": reason})
    return dispatcher.request_restart(why, worker)
