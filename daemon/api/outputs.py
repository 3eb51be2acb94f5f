"""output.verify, output.preview, output.export, keys.rotate, ca.export: thin wrappers over daemon.outputs (work in the
thread pool). output.export sends an output's PNG, verified and decrypted, in chunks that fit the 1 MiB line limit
(unrelated to daemon.audit.export, which writes a copy of the audit log). On a fleet, a job's outputs stay on the box
that ran it: the three output calls on another box answer -32010 naming that box and how to reach it."""

from __future__ import annotations

import base64
import hashlib
from typing import Any

from daemon.api.registry import CallContext, Role, method
from daemon.crypto import MissingOutputError, OutputError
from daemon.fleet.errors import FleetUnavailable
from daemon.protocol import CONFLICT, NOT_FOUND, UNAVAILABLE, RpcError, invalid_params
from daemon.queue.jobs import Job

MAX_PREVIEW_SIDE = 1024
EXPORT_CHUNK = 512 * 1024


def rpc_error(exc: OutputError, action: str | None = None) -> RpcError:
    """An OutputError as the RPC error a client sees (never any key or plaintext in it); `action`
    ("export of j123 image 0") prefixes the message so an operator knows which output failed."""
    if exc.field in ("job_id", "index") and type(exc) is OutputError:
        return invalid_params(exc.field, str(exc))
    code = NOT_FOUND if isinstance(exc, MissingOutputError) else CONFLICT
    message = f"{action} refused: {exc}" if action else str(exc)
    return RpcError(code, message, exc.to_dict())


async def held_here(ctx: CallContext, job: Job) -> None:
    """Nothing on a single box, or when this box ran `job`. Otherwise -32010 naming the box that holds
    its outputs (encrypted under that box's keys, which never leave it) and how to reach that box, as
    it registered in the fleet (`[fleet] reach`, its socket): `data` = `{reason: "elsewhere", box,
    reach, socket}`, which `sai export` and the console follow to the socket the client config maps
    that box to (`[fleet] sockets`)."""
    fleet = ctx.daemon.fleet
    if fleet is None or not job.box or job.box == fleet.box:
        return
    try:
        row = await fleet.registry.find(job.box)
        unknown = "it is not in the fleet's registry now (stopped or left); its outputs are there when it runs again"
    except FleetUnavailable as exc:
        row, unknown = None, f"how to reach it is unknown while {exc}"
    reach, socket = (row["reach"], row["socket"]) if row else (None, None)
    if row is None:
        how = unknown
    elif reach:
        how = f"reach it with: {reach}" + (f" (its socket there: {socket})" if socket else "")
    else:
        how = "it registered no [fleet] reach" + (f"; its socket there is {socket}" if socket else "")
    if row is not None and row["heartbeat_age"] > fleet.queue.lease_seconds:
        how += f"; its last heartbeat was {row['heartbeat_age']:.0f} s ago, it may be down"
    raise RpcError(UNAVAILABLE, f"the outputs of job {job.job_id} are on box {job.box!r}, not on this box "
                   f"({fleet.box!r}): outputs stay encrypted on the box that made them; {how}. Name that box's "
                   "forwarded socket in your client config ([fleet] sockets) and sai follows it there",
                   {"reason": "elsewhere", "job_id": job.job_id, "box": job.box, "reach": reach, "socket": socket})


@method("output.verify", role=Role.VIEWER)
async def verify(ctx: CallContext, job_id: str, index: int | None = None) -> dict[str, Any]:
    """Signature and hashes of a job's outputs (or image `index`), without decrypting:
    `{ok, target, outputs: [{ok, job_id, index, signing_kid, kid, rewrapped, checks, error?}]}`."""
    from daemon.outputs.pipeline import verify_output

    if index is not None and index < 0:
        raise invalid_params("index", "must be 0 or more")
    if ctx.daemon.fleet is not None:
        await held_here(ctx, await ctx.daemon.queue.get(job_id))
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
    await held_here(ctx, job)
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
    await held_here(ctx, job)
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
    chunk = png[offset:offset + EXPORT_CHUNK]
    await ctx.daemon.audit_action(ctx.peer, "output.export", job_id, {
        "index": index, "png_sha256": digest, "offset": offset, "length": len(chunk), "size": len(png)})
    return {"job_id": job_id, "index": index, "offset": offset, "size": len(png), "sha256": digest,
            "data": base64.b64encode(chunk).decode(), "eof": offset + len(chunk) >= len(png),
            "content_type": "image/png"}


@method("keys.rotate", role=Role.ADMIN)
async def rotate(ctx: CallContext) -> dict[str, Any]:
    """New KEK, signing key and C2PA signing certificate, then every .png.sai and every prompt in
    the database re-wrapped (headers only, nothing re-encrypted): `{kek_id, signing_kid, previous_kek_id,
    previous_signing_kid, outputs: {kid, rewrapped, already_current, failed}, prompts: {rewrapped, failed},
    c2pa: {...}}` (c2pa as in ca.export's `current`)."""
    audit = ctx.daemon.audit
    result = await ctx.daemon.key_maintenance.rotate(
        announce=lambda key: audit.rotate_signing_key(key, ctx.peer.actor()))
    details = {"old_kek": result["previous_kek_id"], "new_kek": result["kek_id"],
               "old_signing_kid": result["previous_signing_kid"], "new_signing_kid": result["signing_kid"],
               "rewrapped": result["outputs"]["rewrapped"], "failed": len(result["outputs"]["failed"]),
               "prompts_rewrapped": result["prompts"]["rewrapped"], "prompts_failed": len(result["prompts"]["failed"])}
    await ctx.daemon.audit_action(ctx.peer, "keys.rotate", result["signing_kid"], details)
    for action, subject, event in ctx.daemon.keystore.c2pa.take_events():  # the new C2PA signing certificate
        await ctx.daemon.audit_action(ctx.peer, action, subject, event)
    result["c2pa"] = ctx.daemon.keystore.c2pa.info()
    return result


@method("ca.export", role=Role.VIEWER)
async def ca_export(ctx: CallContext) -> dict[str, Any]:
    """The installation's C2PA CA certificates (public), for other parties to trust as an anchor:
    `{pem, current: {ca_id, ca_subject, ca_not_after, signing_id, signing_not_after, signing_renew_at},
    certificates: [{id, subject, not_after}]}`; the current CA first, then earlier ones not yet expired."""
    from daemon.crypto.certs import cert_id

    creds = ctx.daemon.keystore.c2pa
    cas = await ctx.daemon.run_blocking(creds.ca_certificates)
    return {"pem": creds.ca_pem().decode("ascii"), "current": creds.info(),
            "certificates": [{"id": cert_id(ca), "subject": ca.subject.rfc4514_string(),
                              "not_after": ca.not_valid_after_utc.strftime("%Y-%m-%dT%H:%M:%SZ")} for ca in cas]}
