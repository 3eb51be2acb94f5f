"""output.verify, output.preview, keys.rotate: thin wrappers over daemon.outputs (work in the thread pool)."""

from __future__ import annotations

import base64
from typing import Any

from daemon.api.registry import CallContext, Role, method
from daemon.crypto import MissingOutputError, OutputError
from daemon.protocol import CONFLICT, NOT_FOUND, RpcError, invalid_params

MAX_PREVIEW_SIDE = 1024


def rpc_error(exc: OutputError) -> RpcError:
    """An OutputError as the RPC error a client sees (never any key or plaintext in it)."""
    if exc.field in ("job_id", "index") and type(exc) is OutputError:
        return invalid_params(exc.field, str(exc))
    code = NOT_FOUND if isinstance(exc, MissingOutputError) else CONFLICT
    return RpcError(code, str(exc), exc.to_dict())


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
    queue._check_owner(ctx.peer, job, "preview")
    try:
        png = await ctx.daemon.run_blocking(preview_output, ctx.daemon.outputs_dir, job_id, index,
                                            ctx.daemon.keystore, max_side)
    except OutputError as exc:
        raise rpc_error(exc) from None
    width, height = int.from_bytes(png[16:20], "big"), int.from_bytes(png[20:24], "big")
    await queue.audit(ctx.peer, "output.preview", job_id, {"index": index, "max_side": max_side})
    return {"job_id": job_id, "index": index, "width": width, "height": height,
            "content_type": "image/png", "png": base64.b64encode(png).decode("ascii")}


@method("keys.rotate", role=Role.ADMIN)
async def rotate(ctx: CallContext) -> dict[str, Any]:
    """New KEK and signing key, then every .png.sai re-wrapped (headers only): `{kek_id, signing_kid,
    previous_signing_kid, outputs: {rewrapped, already_current, failed}}`."""
    from daemon.outputs.pipeline import rotate_outputs

    keystore = ctx.daemon.keystore
    old_kek, old_signing = keystore.current_kek_id, keystore.signing_kid
    kek_id, signing_kid = await ctx.daemon.run_blocking(keystore.rotate)
    report = await ctx.daemon.run_blocking(rotate_outputs, ctx.daemon.outputs_dir, keystore)
    details = {"old_kek": old_kek, "new_kek": kek_id, "old_signing_kid": old_signing,
               "new_signing_kid": signing_kid, "rewrapped": report["rewrapped"], "failed": len(report["failed"])}
    await ctx.daemon.queue.audit(ctx.peer, "keys.rotate", signing_kid, details)
    return {"kek_id": kek_id, "signing_kid": signing_kid, "previous_kek_id": old_kek,
            "previous_signing_kid": old_signing, "outputs": report}
