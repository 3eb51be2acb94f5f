"""queue.pause and queue.resume: whether the scheduler starts new batches."""

from __future__ import annotations

from typing import Any

from daemon.api.registry import CallContext, Role, method


@method("queue.pause", role=Role.ADMIN)
async def pause(ctx: CallContext) -> dict[str, Any]:
    return await ctx.daemon.queue.set_paused(ctx.peer, True)


@method("queue.resume", role=Role.ADMIN)
async def resume(ctx: CallContext) -> dict[str, Any]:
    return await ctx.daemon.queue.set_paused(ctx.peer, False)
