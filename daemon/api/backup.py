"""backup.sign: the daemon's signature over a backup's manifest (the key never leaves the daemon).

`sai backup` copies the state directory as the daemon's user and asks for this signature at the
end (docs/operations.md, "Backup and restore"). The daemon checks that the audit state the backup
claims is a prefix of its own log, records `backup.create` (write-ahead), then signs
`daemon.backup.manifest.signed_message`.
"""

from __future__ import annotations

import base64
from typing import Any

from daemon.api.registry import CallContext, Role, method
from daemon.backup.manifest import HEX64, signed_message
from daemon.crypto.keys import public_pem
from daemon.protocol import CONFLICT, RpcError, invalid_params


@method("backup.sign", role=Role.ADMIN)
async def sign(ctx: CallContext, manifest_sha256: str, audit_size: int, audit_root: str) -> dict[str, Any]:
    """`{signature (base64), key_id, public_key (PEM), audit_size, audit_root}` over the message
    naming `manifest_sha256` and the audit state (`audit_size` entries with root `audit_root`, hex)."""
    for field, value in (("manifest_sha256", manifest_sha256), ("audit_root", audit_root)):
        if not HEX64.match(value):
            raise invalid_params(field, "must be 64 lowercase hex digits (a SHA-256)")
    log = ctx.daemon.audit
    if not 1 <= audit_size <= log.size:
        raise invalid_params("audit_size", f"must be between 1 and the log's size {log.size}")
    live = (await log.consistency(audit_size, audit_size))["first_root"]  # only committed nodes: the log may be ahead
    if live != audit_root:
        raise RpcError(CONFLICT, f"the backup's audit log of {audit_size} entries has root {audit_root}, but this "
                                 f"daemon's log at that size has {live}: it is not a copy of this log; not signed",
                       {"field": "audit_root"})
    kid, key = ctx.daemon.keystore.signer()
    await ctx.daemon.audit_action(ctx.peer, "backup.create", manifest_sha256,
                                  {"audit_size": audit_size, "audit_root": audit_root, "key_id": kid})
    signature = key.sign(signed_message(manifest_sha256, audit_size, audit_root))
    return {"signature": base64.b64encode(signature).decode(), "key_id": kid,
            "public_key": public_pem(key.public_key()).decode(), "audit_size": audit_size, "audit_root": audit_root}
