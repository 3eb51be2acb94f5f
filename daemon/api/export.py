"""output.export: an output's bytes in chunks that fit the 1 MiB line limit."""

from __future__ import annotations

import base64
import hashlib
from pathlib import Path
from typing import Any

from daemon.api.registry import CallContext, Role, method
from daemon.protocol import CONFLICT, NOT_FOUND, RpcError, invalid_params

CHUNK = 512 * 1024


@method("output.export", role=Role.OPERATOR)
async def export(ctx: CallContext, job_id: str, index: int = 0, offset: int = 0) -> dict[str, Any]:
    """Chunk of output `index` of `job_id` from `offset`: `{data (base64), offset, size, sha256, eof}`."""
    queue = ctx.daemon.queue
    job = await queue.get(job_id)
    queue._check_owner(ctx.peer, job, "export")
    if job.state != "succeeded":
        raise RpcError(CONFLICT, f"job {job_id} is {job.state}; only a succeeded job has outputs", {"state": job.state})
    record = next((o for o in job.outputs if o["index"] == index), None)
    if record is None:
        raise invalid_params("index", f"job {job_id} has outputs 0 to {len(job.outputs) - 1}")
    try:
        data = await ctx.daemon.run_blocking(Path(record["path"]).read_bytes)
    except FileNotFoundError:
        raise RpcError(NOT_FOUND, f"output file of {job_id} image {index} is missing from the outputs directory") from None
    if offset < 0 or offset > len(data):
        raise invalid_params("offset", f"must be between 0 and {len(data)}")
    digest = hashlib.sha256(data).hexdigest()
    if digest != record["sha256"]:
        raise RpcError(CONFLICT, f"output of {job_id} image {index} does not match its recorded hash; not exported")
    chunk = data[offset:offset + CHUNK]
    return {"job_id": job_id, "index": index, "offset": offset, "size": len(data), "sha256": digest,
            "data": base64.b64encode(chunk).decode(), "eof": offset + len(chunk) >= len(data),
            "content_type": "image/png"}
