"""job.* methods."""

from __future__ import annotations

from typing import Any, Literal

from daemon.api.registry import CallContext, Role, method
from daemon.protocol import UNAVAILABLE, RpcError, echo, invalid_params
from daemon.queue.jobs import PRIORITIES, STATES

Priority = Literal["low", "normal", "high", "critical"]
MAX_LIST = 1000


@method("job.submit", role=Role.OPERATOR)
async def submit(ctx: CallContext, prompt: str, negative_prompt: str = "", width: int | None = None,
                 height: int | None = None, steps: int | None = None, guidance: float | None = None,
                 seed: int | None = None, priority: str | None = None, count: int | None = None,
                 client_token: str | None = None, reproducible: bool = False) -> dict[str, Any]:
    try:
        if client_token is not None and not 1 <= len(client_token) <= 128:
            raise invalid_params("client_token", "must be 1 to 128 characters")
        refusal = ctx.daemon.monitor.disk_refusal()
        if refusal:
            raise RpcError(UNAVAILABLE, refusal, {"reason": "disk"})
        return await ctx.daemon.queue.submit(
            ctx.peer, client_token, prompt=prompt, negative_prompt=negative_prompt, width=width, height=height,
            steps=steps, guidance=guidance, seed=seed, priority=priority, count=count, reproducible=reproducible)
    except RpcError as exc:
        ctx.daemon.monitor.service.submit_refused(exc)  # the sai_job_submits_refused_total metric
        raise


@method("job.get", role=Role.VIEWER)
async def get(ctx: CallContext, job_id: str) -> dict[str, Any]:
    queue = ctx.daemon.queue
    return queue.view(ctx.peer, await queue.get(job_id))


@method("job.list", role=Role.VIEWER)
async def list_jobs(ctx: CallContext, state: str | None = None, limit: int = 100) -> dict[str, Any]:
    if state is not None and state not in STATES:
        raise invalid_params("state", f"{echo(state)!r} is not one of {', '.join(STATES)}")
    if not 1 <= limit <= MAX_LIST:
        raise invalid_params("limit", f"{limit} is out of range; allowed 1 to {MAX_LIST}")
    queue = ctx.daemon.queue
    return {"jobs": [queue.view(ctx.peer, job) for job in await queue.list(state, limit)]}


@method("job.cancel", role=Role.OPERATOR)
async def cancel(ctx: CallContext, job_id: str) -> dict[str, Any]:
    dispatcher = ctx.daemon.dispatcher
    return await ctx.daemon.queue.cancel(ctx.peer, job_id,
                                         lambda job: dispatcher.cancel_running(job, ctx.peer.user))


@method("job.set_priority", role=Role.OPERATOR)
async def set_priority(ctx: CallContext, job_id: str, priority: str) -> dict[str, Any]:
    if priority not in PRIORITIES:
        raise invalid_params("priority", f"{echo(priority)!r} is not one of {', '.join(PRIORITIES)}")
    return await ctx.daemon.queue.set_priority(ctx.peer, job_id, PRIORITIES.index(priority))
