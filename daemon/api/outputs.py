"""output.verify, output.preview, keys.rotate: thin wrappers over daemon.outputs (work in the thread pool)."""

from __future__ import annotations

import base64
from typing import Any

from daemon.api.registry import CallContext, Role, method
from daemon.crypto import MissingOutputError, OutputError
from daemon.protocol import CONFLICT, NOT_FOUND, RpcError, invalid_params

MAX_PREVIEW_SIDE = 1024


def rpc_error(exc: OutputError, action: str | None = None) -> RpcError:
    """An OutputError as the RPC error a client sees (never any key or plaintext in it); `action`
    ("export of j123 image 0") prefixes the message so an operator knows which output failed."""
    if exc.field in ("job_id", "index") and type(exc) is OutputError:
        return invalid_params(exc.field, str(exc))
    code = NOT_FOUND if isinstance(exc, MissingOutputError) else CONFLICT
    message = f"{action} refused: {exc}" if action else str(exc)
    return RpcError(code, message, exc.to_dict())


@method("output.verify", role=Role.VIEWER)
async def verify(ctx: CallContext, job_id: str, index: int | None = None) -> dict[str, Any]:
    """Signature and hashes of a job's outputs (or image `index`), without decrypting:
    `{ok, target, outputs: [{ok, job_id, index, signing_kid, kid, rewrapped, checks, error?}]}`."""
    from daemon.outputs.pipeline import verify_output

    if index is not None and index < 0:
        raise invalid_params("index", "must be 0 or more")
    keystore = ctx.daemon.keystore
    try:
        return await ctx.daemon.run_blocking(verify_output, job_id, ctx.daemon.outputs_dir, keystore, index)
    except OutputError as exc:
        raise rpc_error(exc) from None


@method("output.preview", role=Role.OPERATOR)
async def preview(ctx: CallContext, job_id: str, index: int = 0, max_side: int = 128) -> dict[str, Any]:
    """A small PNG of an output (verified, decrypted in memory, no metadata): `{png (base64), width, height}`."""
    from daemon.outputs.pipeline import preview_output

    if not 16 <= max_side <= MAX_PREVIEW_SIDE:
        raise invalid_params("max_side", f"must be between 16 and {MAX_PREVIEW_SIDE}")
    queue = ctx.daemon.queue
    job = await queue.get(job_id)
    queue.check_owner(ctx.peer, job, "preview")
    ctx.daemon.call_limits.take(ctx.peer, "output.preview")
    try:
        png = await ctx.daemon.run_blocking(preview_output, ctx.daemon.outputs_dir, job_id, index,
                                            ctx.daemon.keystore, max_side)
    except OutputError as exc:
        raise rpc_error(exc, f"preview of {job_id} image {index}") from None
    width, height = int.from_bytes(png[16:20], "big"), int.from_bytes(png[20:24], "big")
    await ctx.daemon.audit_action(ctx.peer, "output.preview", job_id, {"index": index, "max_side": max_side})
    return {"job_id": job_id, "index": index, "width": width, "height": height,
            "content_type": "image/png", "png": base64.b64encode(png).decode("ascii")}


@method("keys.rotate", role=Role.ADMIN)
async def rotate(ctx: CallContext) -> dict[str, Any]:
    """New KEK and signing key, then every .png.sai and every prompt in the database re-wrapped
    (headers only, nothing re-encrypted): `{kek_id, signing_kid, previous_kek_id, previous_signing_kid,
    outputs: {kid, rewrapped, already_current, failed}, prompts: {rewrapped, failed}}`."""
    audit = ctx.daemon.audit
    result = await ctx.daemon.key_maintenance.rotate(
        announce=lambda key: audit.rotate_signing_key(key, ctx.peer.actor()))
    details = {"old_kek": result["previous_kek_id"], "new_kek": result["kek_id"],
               "old_signing_kid": result["previous_signing_kid"], "new_signing_kid": result["signing_kid"],
               "rewrapped": result["outputs"]["rewrapped"], "failed": len(result["outputs"]["failed"]),
               "prompts_rewrapped": result["prompts"]["rewrapped"], "prompts_failed": len(result["prompts"]["failed"])}
    await ctx.daemon.audit_action(ctx.peer, "keys.rotate", result["signing_kid"], details)
    return result
