"""events.subscribe: which event topics this connection receives."""

from __future__ import annotations

from typing import Any

from daemon.api.registry import CallContext, Role, method
from daemon.protocol import TOPICS, echo, invalid_params


@method("events.subscribe", role=Role.VIEWER)
async def subscribe(ctx: CallContext, topics: list[str] | None = None) -> dict[str, Any]:
    wanted = set(TOPICS if topics is None else topics)
    unknown = sorted(wanted - set(TOPICS))
    if unknown:
        raise invalid_params("topics", f"unknown topic {echo(unknown[0])!r}; topics: {', '.join(TOPICS)}")
    if ctx.connection is None:
        raise invalid_params("topics", "events need a socket connection")
    return {"topics": sorted(ctx.connection.subscribe(wanted))}
