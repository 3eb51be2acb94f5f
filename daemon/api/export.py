"""output.export: an output's PNG, verified and decrypted, in chunks that fit the 1 MiB line limit."""

from __future__ import annotations

import base64
import hashlib
from typing import Any

from daemon.api.outputs import rpc_error
from daemon.api.registry import CallContext, Role, method
from daemon.crypto import OutputError
from daemon.protocol import CONFLICT, RpcError, invalid_params

CHUNK = 512 * 1024


@method("output.export", role=Role.OPERATOR)
async def export(ctx: CallContext, job_id: str, index: int = 0, offset: int = 0) -> dict[str, Any]:
    """Chunk of output `index` of `job_id` from `offset`: `{data (base64), offset, size, sha256, eof}`.

    Every call checks the manifest signature and the encrypted file's hashes, decrypts in memory
    and checks the PNG against the signed `png_sha256` before any byte is returned; `sha256` is
    that of the whole decrypted PNG. Nothing is decrypted to disk. Every chunk is audited (offset and length), so no
    byte leaves unrecorded.
    """
    from daemon.outputs.pipeline import export_output

    queue = ctx.daemon.queue
    job = await queue.get(job_id)
    queue.check_owner(ctx.peer, job, "export")
    if job.state != "succeeded":
        raise RpcError(CONFLICT, f"job {job_id} is {job.state}; only a succeeded job has outputs", {"state": job.state})
    record = next((o for o in job.outputs if o["index"] == index), None)
    if record is None:
        raise invalid_params("index", f"job {job_id} has outputs 0 to {len(job.outputs) - 1}")
    if offset < 0:
        raise invalid_params("offset", "must be 0 or more")
    try:
        png = await ctx.daemon.run_blocking(export_output, ctx.daemon.outputs_dir, job_id, index, ctx.daemon.keystore)
    except OutputError as exc:
        raise rpc_error(exc, f"export of {job_id} image {index}") from None
    digest = hashlib.sha256(png).hexdigest()
    recorded = record.get("png_sha256") or record.get("sha256")
    if recorded and digest != recorded:
        raise RpcError(CONFLICT, f"output of {job_id} image {index} does not match the hash recorded for the job; "
                       f"not exported", {"field": "png_sha256"})
    if offset > len(png):
        raise invalid_params("offset", f"must be between 0 and {len(png)}")
    chunk = png[offset:offset + CHUNK]
    await ctx.daemon.audit_action(ctx.peer, "output.export", job_id, {
        "index": index, "png_sha256": digest, "offset": offset, "length": len(chunk), "size": len(png)})
    return {"job_id": job_id, "index": index, "offset": offset, "size": len(png), "sha256": digest,
            "data": base64.b64encode(chunk).decode(), "eof": offset + len(chunk) >= len(png),
            "content_type": "image/png"}
