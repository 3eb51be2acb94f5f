"""daemon.status, queue.pause / queue.resume, events.subscribe."""

from __future__ import annotations

from typing import Any

from daemon.api.registry import CallContext, Role, method
from daemon.protocol import TOPICS, echo, invalid_params


@method("daemon.status", role=Role.VIEWER)
async def status(ctx: CallContext) -> dict[str, Any]:
    return ctx.daemon.status(ctx.peer)


@method("queue.pause", role=Role.ADMIN)
async def pause(ctx: CallContext) -> dict[str, Any]:
    return await ctx.daemon.queue.set_paused(ctx.peer, True)


@method("queue.resume", role=Role.ADMIN)
async def resume(ctx: CallContext) -> dict[str, Any]:
    return await ctx.daemon.queue.set_paused(ctx.peer, False)


@method("events.subscribe", role=Role.VIEWER)
async def subscribe(ctx: CallContext, topics: list[str] | None = None) -> dict[str, Any]:
    wanted = set(TOPICS if topics is None else topics)
    unknown = sorted(wanted - set(TOPICS))
    if unknown:
        raise invalid_params("topics", f"unknown topic {echo(unknown[0])!r}; topics: {', '.join(TOPICS)}")
    if ctx.connection is None:
        raise invalid_params("topics", "events need a socket connection")
    return {"topics": sorted(ctx.connection.subscribe(wanted))}
