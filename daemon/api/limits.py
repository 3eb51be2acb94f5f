"""What the expensive methods cost a user: per-user rates, and one audit verification at a time.

`audit.verify` reads the whole log (a deep one hashes every entry on every core), and every
`output.preview` decrypts an image and writes an audit entry. Each user but an admin has a token
bucket per such method (`daemon.verify_per_minute`/`verify_burst`,
`daemon.preview_per_minute`/`preview_burst`); past it the call gets -32003 with `retry_after`.
Verifications run one at a time daemon-wide: while one runs, another user's gets -32003 at once,
and an admin's waits for its turn.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from daemon.auth import Peer, Role
from daemon.config import Section
from daemon.protocol import RATE_LIMITED, RpcError
from daemon.queue.admission import TokenBucket

VERIFY_BUSY_RETRY = 1.0


class CallLimits:
    def __init__(self, rates: dict[str, tuple[float, int]]) -> None:
        """`rates`: method name -> (calls per minute, burst)."""
        self._rates = rates
        self._buckets: dict[tuple[str, int], TokenBucket] = {}
        self._verify = asyncio.Lock()

    @classmethod
    def from_config(cls, daemon: Section) -> CallLimits:
        return cls({"audit.verify": (daemon.verify_per_minute, daemon.verify_burst),
                    "output.preview": (daemon.preview_per_minute, daemon.preview_burst)})

    def take(self, peer: Peer, method: str) -> None:
        """Spend one of `peer`'s calls of `method`; -32003 with `retry_after` when none is left."""
        if peer.role >= Role.ADMIN or method not in self._rates:
            return
        per_minute, burst = self._rates[method]
        key = (method, peer.uid)
        bucket = self._buckets.get(key)
        if bucket is None:
            bucket = self._buckets[key] = TokenBucket(per_minute / 60.0, burst)
        wait = bucket.take()
        if wait > 0:
            raise RpcError(RATE_LIMITED, f"rate limit for {peer.user}: {per_minute:g} {method} calls per minute; "
                           f"try again in {wait:.1f} s", {"retry_after": round(wait, 3), "method": method})

    @asynccontextmanager
    async def verify_slot(self, peer: Peer) -> AsyncIterator[None]:
        """Hold the one verification slot; -32003 for a non-admin while another verification runs."""
        if self._verify.locked() and peer.role < Role.ADMIN:
            raise RpcError(RATE_LIMITED, "another audit verification is running (one runs at a time); try again "
                           "when it has finished", {"retry_after": VERIFY_BUSY_RETRY, "reason": "verify_running"})
        async with self._verify:
            yield
