"""audit.tail, audit.verify, audit.checkpoint, audit.proof, audit.consistency, audit.export:
thin wrappers over daemon.audit.log.AuditLog (`ctx.daemon.audit`)."""

from __future__ import annotations

import base64
import binascii
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from daemon.api.registry import CallContext, Role, method
from daemon.audit.anchor import unrecorded_jobs_reason
from daemon.audit.views import entry_view
from daemon.fleet.checkpoints import CheckpointBoard
from daemon.fleet.errors import FleetUnavailable
from daemon.fleet.witness import witnessed_notes
from daemon.protocol import CONFLICT, UNAVAILABLE, RpcError, invalid_params


@contextmanager
def _params(field: str) -> Iterator[None]:
    """A ValueError from the log (out-of-range index or size) as -32602 naming `field`."""
    try:
        yield
    except ValueError as exc:
        raise invalid_params(field, str(exc)) from None


@method("audit.tail", role=Role.VIEWER)
async def tail(ctx: CallContext, limit: int = 50, action: str | None = None, actor: str | None = None,
               before_seq: int | None = None, subject: str | None = None) -> dict[str, Any]:
    """The latest entries, oldest first: `{entries: [...], size}`. `actor` is a user name or uid;
    `subject` picks one job's (or key's, alert's) entries."""
    if not 1 <= limit <= 1000:
        raise invalid_params("limit", "must be between 1 and 1000")
    log = ctx.daemon.audit
    entries = await log.tail(limit=limit, action=action, actor=actor, before_seq=before_seq, subject=subject)
    admin = ctx.peer.role >= Role.ADMIN
    return {"entries": [entry_view(entry, ctx.peer.uid, admin) for entry in entries], "size": log.size}


@method("audit.verify", role=Role.VIEWER)
async def verify(ctx: CallContext, deep: bool = False, against: str | None = None,
                 first_key: str | None = None, witnessed: bool = False) -> dict[str, Any]:
    """`{ok, size, first_bad, reason, jobs_checked, unrecorded_jobs}`; `against` is a checkpoint note
    saved earlier; `first_key` (base64 of a raw Ed25519 public key) pins where the key chain must
    start instead of the anchor's key; `witnessed` (a fleet member): the log must also extend every
    checkpoint of it the other boxes cosigned (`witnessed_checked` counts them). A job with no
    `job.submit` entry fails the check (after the log's own checks)."""
    pinned = _raw_public_key(first_key) if first_key is not None else None
    if witnessed and ctx.daemon.fleet is None:
        raise invalid_params("witnessed", "this daemon is not a fleet member ([fleet] database is empty)")
    limits = ctx.daemon.call_limits  # rate per user, one verification at a time (daemon.api.limits)
    limits.take(ctx.peer, "audit.verify")
    async with limits.verify_slot(ctx.peer):
        also = await _witnessed(ctx) if witnessed else []
        job_ids = await ctx.daemon.store.job_ids()  # first: a job's submit entry commits before the job
        result = await ctx.daemon.audit.verify(deep=deep, against=against, first_key=pinned, also=also)
        if witnessed:
            result["witnessed_checked"] = len(also)
        missing = await ctx.daemon.audit.unrecorded_jobs(job_ids)
        result.update(jobs_checked=len(job_ids), unrecorded_jobs=missing[:100])
        if missing and result["ok"]:
            result.update(ok=False, reason=unrecorded_jobs_reason(missing))
        return result


async def _witnessed(ctx: CallContext) -> list[tuple[str, str]]:
    """This box's checkpoints the fleet's other boxes cosigned (daemon.fleet.witness)."""
    fleet = ctx.daemon.fleet
    assert fleet is not None
    try:
        return await witnessed_notes(CheckpointBoard(fleet.db), fleet.box)
    except FleetUnavailable as exc:
        raise RpcError(UNAVAILABLE, str(exc), {"reason": "fleet_database"}) from exc


def _raw_public_key(text: str) -> bytes:
    try:
        raw = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raw = b""
    if len(raw) != 32:
        raise invalid_params("first_key", "must be the base64 of a raw 32-byte Ed25519 public key")
    return raw


@method("audit.checkpoint", role=Role.VIEWER)
async def checkpoint(ctx: CallContext, fresh: bool = True) -> dict[str, Any]:
    """A signed checkpoint: `{checkpoint}` (C2SP signed note text). `fresh` false reads the latest
    one written instead of signing a new one (what a console refreshing its pane wants)."""
    log = ctx.daemon.audit
    latest = None if fresh else await log.latest_checkpoint()
    return {"checkpoint": latest or await log.checkpoint()}


@method("audit.proof", role=Role.VIEWER)
async def proof(ctx: CallContext, index: int, tree_size: int | None = None) -> dict[str, Any]:
    """Inclusion proof of entry `index`: `{index, tree_size, leaf_hash, hashes, root_hash}` (hex)."""
    with _params("index" if tree_size is None else "tree_size"):
        return await ctx.daemon.audit.proof(index, tree_size)


@method("audit.consistency", role=Role.VIEWER)
async def consistency(ctx: CallContext, first: int, second: int | None = None) -> dict[str, Any]:
    """Consistency proof between two sizes: `{first, second, hashes, first_root, second_root}` (hex)."""
    with _params("first" if second is None else "second"):
        return await ctx.daemon.audit.consistency(first, second)


@method("audit.export", role=Role.VIEWER)  # the admin check is below, so that a refusal is recorded
async def export(ctx: CallContext, directory: str) -> dict[str, Any]:
    """Write entries, checkpoints and public keys into `directory` (absolute, new or empty, on the
    daemon's host, written as the daemon's user): the manifest, plus `directory`.

    Every attempt is recorded as `audit.export` with its outcome: `refused` with the reason (not
    an admin, a relative path, a directory that is not empty or not writable) and nothing written;
    `started` before writing (so the export holds its own entry); `failed` with the reason when the
    writing fails after all."""
    path = Path(directory)
    log = ctx.daemon.audit
    try:
        ctx.require(Role.ADMIN, "audit.export")
        if not path.is_absolute():
            raise invalid_params("directory", "must be an absolute path")
        refusal = _unwritable(path)
        if refusal:
            raise RpcError(CONFLICT, f"cannot export to {path}: {refusal}")
    except RpcError as exc:
        await log.append(ctx.peer.actor(), "audit.export", str(path), {"outcome": "refused", "reason": exc.message})
        raise
    await log.append(ctx.peer.actor(), "audit.export", str(path), {"outcome": "started"})
    try:
        manifest = await log.export(path)
    except OSError as exc:
        reason = f"cannot export to {path}: {exc}"
        await log.append(ctx.peer.actor(), "audit.export", str(path), {"outcome": "failed", "reason": reason})
        raise RpcError(CONFLICT, reason) from None
    return {"directory": str(path), **manifest}


def _unwritable(path: Path) -> str | None:
    """Why the daemon cannot export into `path`, checked before anything is recorded as started:
    a directory that is not empty, something else of that name, or no write access to the nearest
    directory that exists (a read-only mount included)."""
    try:
        if path.is_dir():
            if any(path.iterdir()):
                return "it is not empty: export into a new or empty directory"
        elif path.exists():
            return "it exists and is not a directory"
        existing = path.parent
        while not existing.exists() and existing != existing.parent:
            existing = existing.parent
    except (OSError, ValueError) as exc:
        return f"it cannot be examined ({exc})"
    if not existing.is_dir():
        return f"{existing} is not a directory"
    if not os.access(existing, os.W_OK | os.X_OK):
        return f"the daemon's user may not write in {existing}"
    return None
