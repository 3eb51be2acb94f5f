"""output.identify: what this installation knows about an image a client sends (daemon.outputs.identify).

The client sends the file's bytes, never a path: the daemon opens nothing a client names with its
own rights. A request line holds at most 1 MiB, so a larger file comes in chunks of one upload
(`upload` id, `offset`, declared `size`); each connection has at most one upload under way, a new
one at offset 0 replaces it, and all uploads together hold at most `HELD_LIMIT` bytes. The reply
to the last chunk (or to a file sent whole) is the report. Decoding, the C2PA reading and the mark
search run in the daemon's thread pool, one identify at a time per daemon (the others wait), so a
flood of large images cannot take every thread the output path needs. Every identify is audited
with what was found (hashes, states, the job), never the image; so is every refusal of the image.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import time
import weakref
from dataclasses import dataclass, field
from typing import Any

from daemon.api.registry import CallContext, Role, method
from daemon.protocol import RATE_LIMITED, RpcError, invalid_params

HELD_LIMIT = 128 * 1024 * 1024
UPLOAD_IDLE = 120.0
"""Seconds an unfinished upload is kept without a next chunk."""


@dataclass
class _Upload:
    upload_id: str
    size: int
    data: bytearray = field(default_factory=bytearray)
    touched: float = field(default_factory=time.monotonic)


_UPLOADS: weakref.WeakKeyDictionary[object, _Upload] = weakref.WeakKeyDictionary()
_SLOTS: weakref.WeakKeyDictionary[object, asyncio.Semaphore] = weakref.WeakKeyDictionary()


def _held(now: float) -> int:
    for owner, upload in list(_UPLOADS.items()):
        if now - upload.touched > UPLOAD_IDLE or getattr(owner, "closed", False):
            _UPLOADS.pop(owner, None)
    return sum(len(u.data) for u in _UPLOADS.values())


def _receive(ctx: CallContext, chunk: bytes, size: int, offset: int, upload: str | None) -> bytes | None:
    """The whole file once its last chunk is in, None while more is to come; -32602 naming the field."""
    if offset == 0 and len(chunk) == size:
        return chunk
    if not upload or len(upload) > 64:
        raise invalid_params("upload", "a file sent in chunks needs an upload id of 1 to 64 characters")
    owner: object = ctx.connection if ctx.connection is not None else ctx.daemon
    now = time.monotonic()
    current = _UPLOADS.get(owner)
    if offset == 0:
        _UPLOADS.pop(owner, None)
        if _held(now) + size > HELD_LIMIT:
            raise RpcError(RATE_LIMITED, f"other identify uploads hold {HELD_LIMIT} bytes; try again shortly",
                           {"retry_after": 5.0, "reason": "identify_uploads"})
        current = _UPLOADS[owner] = _Upload(upload, size)
    elif current is None or current.upload_id != upload:
        raise invalid_params("upload", f"no upload {upload!r} under way on this connection (start at offset 0)")
    elif offset != len(current.data) or size != current.size:
        raise invalid_params("offset", f"upload {upload!r} expects offset {len(current.data)} of {current.size}")
    if offset + len(chunk) > size:
        _UPLOADS.pop(owner, None)
        raise invalid_params("data", f"the chunk ends at {offset + len(chunk)}, past the declared size {size}")
    current.data += chunk
    current.touched = now
    if len(current.data) < size:
        return None
    _UPLOADS.pop(owner, None)
    return bytes(current.data)


@method("output.identify", role=Role.VIEWER)
async def identify(ctx: CallContext, data: str, size: int | None = None, offset: int = 0,
                   upload: str | None = None) -> dict[str, Any]:
    """`data`: the image's bytes (base64), or a chunk of them from `offset` when `size` (the whole
    file's) is more. Reply to a chunk: `{complete: false, received, size}`; to the whole file:
    `{complete: true, ours, format, width, height, sha256, c2pa: {state, signer, issuer, failures,
    job_id, index}, mark: {found, method, fingerprint, confidence, chance, corrected, scale},
    job: null | {job_id, index, found_by, created_at, finished_at, model, pixels, user?, prompt?}}`.
    Viewers never get `user` or prompts; an operator gets `user`, and the prompt of their own jobs."""
    from daemon.outputs.identify import MAX_BYTES, ImageRefused, choose_job, describe_job, examine

    try:
        chunk = base64.b64decode(data, validate=True)
    except (binascii.Error, ValueError):
        raise invalid_params("data", "must be base64") from None
    size = len(chunk) if size is None else size
    if offset < 0:
        raise invalid_params("offset", "must be 0 or more")
    if not 0 < size <= MAX_BYTES:
        message = f"the file is {size} bytes; identify takes 1 to {MAX_BYTES} bytes"
        await ctx.daemon.audit_action(ctx.peer, "output.identify", "image", {"refused": message, "size": size})
        raise invalid_params("size", message)
    whole = _receive(ctx, chunk, size, offset, upload)
    if whole is None:
        return {"complete": False, "received": offset + len(chunk), "size": size}
    anchors = ctx.daemon.keystore.c2pa.ca_pem().decode("ascii")
    slot = _SLOTS.setdefault(ctx.daemon, asyncio.Semaphore(1))
    try:
        async with slot:
            exam, legacy = await ctx.daemon.run_blocking(examine, whole, anchors)
    except ImageRefused as exc:
        await ctx.daemon.audit_action(ctx.peer, "output.identify", "image", {"refused": str(exc), "size": size})
        raise invalid_params("data", str(exc)) from None
    store, queue = ctx.daemon.store, ctx.daemon.queue
    fingerprint = exam.mark["fingerprint"]
    by_fingerprint = await store.job_ids_of_fingerprint(fingerprint) if fingerprint else []
    claimed = exam.claimed_job
    claimed_job = (queue.active.get(claimed) or await store.get(claimed)) if claimed else None
    job_id, found_by = choose_job(exam, legacy, by_fingerprint, claimed_job is not None)
    job = None
    if job_id is not None:
        job = claimed_job if claimed_job is not None and claimed_job.job_id == job_id else (
            queue.active.get(job_id) or await store.get(job_id))
    described = None
    if job is not None:
        show_owner = ctx.peer.role >= Role.OPERATOR
        described = describe_job(job, exam, found_by, show_owner, show_owner and queue.may_see_prompt(ctx.peer, job))
    ours = described is not None or exam.c2pa.get("state") == "Trusted"
    c2pa = {**exam.c2pa, "job_id": claimed, "index": exam.claimed_index}
    await ctx.daemon.audit_action(ctx.peer, "output.identify", job_id or "image", {
        "ours": ours, "format": exam.format, "width": exam.width, "height": exam.height, "sha256": exam.sha256,
        "size": size, "c2pa": exam.c2pa.get("state"), "signer": exam.c2pa.get("signer"), "claimed_job": claimed,
        "fingerprint": fingerprint, "job_id": job_id, "found_by": found_by,
        "pixels": described["pixels"] if described else None})
    return {"complete": True, "ours": ours, "format": exam.format, "width": exam.width, "height": exam.height,
            "sha256": exam.sha256, "size": size, "c2pa": c2pa, "mark": exam.mark, "job": described}
