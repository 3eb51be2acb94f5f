"""daemon.status: the daemon's state as a client sees it (queue, worker, models, uptime, stopping)."""

from __future__ import annotations

from typing import Any

from daemon.api.registry import CallContext, Role, method


@method("daemon.status", role=Role.VIEWER)
async def status(ctx: CallContext) -> dict[str, Any]:
    """The daemon's own view, plus `models`: every configured model as `model.list` shows it."""
    return {**ctx.daemon.status(ctx.peer), "models": ctx.daemon.queue.models.model_list()["models"]}
