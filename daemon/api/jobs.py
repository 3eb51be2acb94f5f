"""job.* methods."""

from __future__ import annotations

import re
from typing import Any

from daemon.api.registry import CallContext, Role, method
from daemon.protocol import (
    INVALID_PARAMS,
    NOT_FOUND,
    PRIORITIES,
    UNAVAILABLE,
    RpcError,
    echo,
    invalid_params,
    items_that_fit,
)
from daemon.queue.jobs import STATES

MAX_LIST = 1000
MAX_CANDIDATES = 10
PREFIX = re.compile(r"j[0-9a-f]{0,12}")


@method("job.submit", role=Role.OPERATOR)
async def submit(ctx: CallContext, prompt: str, negative_prompt: str = "", width: int | None = None,
                 height: int | None = None, steps: int | None = None, guidance: float | None = None,
                 seed: int | None = None, priority: str | None = None, count: int | None = None,
                 client_token: str | None = None, reproducible: bool = False,
                 model: str | None = None) -> dict[str, Any]:
    """`model`: a configured model's name (model.list); None runs the default model. Its defaults
    fill width, height, steps and guidance when they are left out."""
    try:
        if client_token is not None and not 1 <= len(client_token) <= 128:
            raise invalid_params("client_token", "must be 1 to 128 characters")
        refusal = ctx.daemon.monitor.disk_refusal()
        if refusal:
            raise RpcError(UNAVAILABLE, refusal, {"reason": "disk"})
        return await ctx.daemon.queue.submit(
            ctx.peer, client_token, prompt=prompt, negative_prompt=negative_prompt, width=width, height=height,
            steps=steps, guidance=guidance, seed=seed, priority=priority, count=count, reproducible=reproducible,
            model=model)
    except RpcError as exc:
        ctx.daemon.monitor.service.submit_refused(exc)  # the sai_job_submits_refused_total metric
        raise


@method("job.get", role=Role.VIEWER)
async def get(ctx: CallContext, job_id: str) -> dict[str, Any]:
    queue = ctx.daemon.queue
    return queue.view(ctx.peer, await queue.get(job_id))


@method("job.list", role=Role.VIEWER)
async def list_jobs(ctx: CallContext, state: str | None = None, limit: int = 100, offset: int = 0) -> dict[str, Any]:
    """A page of the listing and `total`, how many jobs match `state` in all. Past the running and
    queued jobs (at most the queue's cap, in memory) a page is read from the store at its offset.
    A page holds fewer than `limit` jobs where more would not fit in one reply line (1 MiB): ask
    again from `offset + len(jobs)`."""
    if state is not None and state not in STATES:
        raise invalid_params("state", f"{echo(state)!r} is not one of {', '.join(STATES)}")
    if not 1 <= limit <= MAX_LIST:
        raise invalid_params("limit", f"{limit} is out of range; allowed 1 to {MAX_LIST}")
    if offset < 0:
        raise invalid_params("offset", f"{offset} is negative")
    queue = ctx.daemon.queue
    jobs, total = await queue.page(state, limit, offset)
    views = [queue.view(ctx.peer, job) for job in jobs]
    return {"jobs": views[:items_that_fit(views)], "total": total, "offset": offset}


@method("job.resolve", role=Role.VIEWER)
async def resolve(ctx: CallContext, prefix: str) -> dict[str, Any]:
    """The one job whose id starts with `prefix`, so people and scripts can type a few characters.
    The leading `j` may be left out. Several: invalid params naming up to ten candidates;
    none: not found."""
    text = prefix.strip().lower()
    text = text if text.startswith("j") else "j" + text
    found = await ctx.daemon.queue.ids_starting(text, MAX_CANDIDATES + 1) if PREFIX.fullmatch(text) else []
    if not found:
        raise RpcError(NOT_FOUND, f"no job {echo(prefix)} (a job id is j and 12 hex digits; its start will do)",
                       {"job_id": echo(prefix)})
    if len(found) > 1:
        more = ", …" if len(found) > MAX_CANDIDATES else ""
        shown = found[:MAX_CANDIDATES]
        raise RpcError(INVALID_PARAMS, f"{text} is ambiguous: it starts {', '.join(shown)}{more}; give more characters",
                       {"field": "prefix", "candidates": shown})
    return {"job_id": found[0]}


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
