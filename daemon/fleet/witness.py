"""Audit logs witness each other: every box publishes its checkpoints, the others check and cosign.

Each pass (every heartbeat) a box
- publishes its audit log's newest checkpoint, if it has not yet, with the consistency proof
  from the checkpoint it published before (daemon.fleet.checkpoints);
- checks each checkpoint the other boxes published since its last pass, in their order: signed by
  that box's audit key (pinned at first sight: trust on first use), of the same origin, and an
  extension of the last checkpoint it witnessed of that box (RFC 9162 consistency proof, checked
  with daemon.audit.merkle). One that is adds this box's C2SP cosignature (daemon.fleet.cosignature)
  made with this box's signing key, which never leaves the daemon.
- A checkpoint that does not (fewer entries than witnessed, another root at the same size, a proof
  that fails or is missing, another key or origin) means that box's log was rolled back or forked:
  `on_fork(box, reason, details)` is told once, until a checkpoint of that box verifies again.

What this box has witnessed (pinned key, origin, last size and root, cursor per box) is kept in
its state directory, not in the database, so rewriting the database cannot move a witness's view.
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from daemon.alarms import raise_alarm
from daemon.audit import checkpoint as cpmod
from daemon.audit import merkle
from daemon.audit.log import AuditLog
from daemon.events import EventBus
from daemon.fleet import cosignature, rotation
from daemon.fleet.checkpoints import CheckpointBoard, Published
from daemon.fleet.errors import FleetError, FleetUnavailable
from daemon.safefiles import atomic_write

log = logging.getLogger("sai.fleet")

STATE_FORMAT = "sai-fleet-witness/1"
OnFork = Callable[[str, str, dict[str, Any]], Awaitable[None]]
"""Told (box, reason, details) when a box's log no longer extends what this box witnessed."""


class WitnessStateError(FleetError):
    """`state/fleet-witness.json` cannot be read: the daemon does not start (it names the file)."""


@dataclass
class Seen:
    """What this box witnessed of another box's log."""

    cursor: int = 0
    """The last published checkpoint (seq) of that box examined."""
    key: str | None = None
    """Base64 of the box's audit public key, pinned at first sight."""
    origin: str | None = None
    size: int = 0
    root: str = ""
    flagged: str | None = None
    """Why its last checkpoint was refused (reported once, until one verifies again)."""


def witness_name(origin: str) -> str:
    """The cosigner name of the box whose audit origin is `origin` (`<box>/sai-audit`)."""
    return origin.removesuffix("/sai-audit") + "/sai-witness"


def judge(seen: Seen, cp: Published) -> tuple[cpmod.Checkpoint | None, str | None, bytes]:
    """(the checkpoint, None, the key it verified under) when `cp` may be cosigned, else (None or
    it, why not, the key tried)."""
    key = base64.b64decode(seen.key) if seen.key else cp.public_key
    whose = "the key pinned for it at first sight" if seen.key else "the key it published"
    if cp.rotation and seen.key:
        try:
            key = rotation.follow(cp.rotation, key, cp.tree_size, cpmod.parse(cp.note).root)
            whose = "the key its audit.key_rotate entries (signed by the key pinned) lead to"
        except (ValueError, cpmod.CheckpointError) as exc:
            return None, f"its checkpoint #{cp.seq} is signed by a new key whose rotation does not verify: {exc}", key
    try:
        parsed, key = cpmod.verify(cp.note, [key])
    except cpmod.CheckpointError as exc:
        return None, f"its checkpoint #{cp.seq} is not signed by {whose}: {exc}", key
    return parsed, _extends(seen, cp, parsed), key


def _extends(seen: Seen, cp: Published, parsed: cpmod.Checkpoint) -> str | None:
    """Why `parsed` (verified) does not extend what was witnessed of its box; None when it does."""
    if parsed.size != cp.tree_size:
        return f"its checkpoint #{cp.seq} is filed under {cp.tree_size} entries but says {parsed.size}"
    if seen.origin is not None and parsed.origin != seen.origin:
        return f"its checkpoint #{cp.seq} is of log {parsed.origin!r}, not of {seen.origin!r} witnessed before"
    if not seen.size:
        return None
    root = base64.b64decode(seen.root)
    if parsed.size < seen.size:
        return (f"its audit log was rolled back: checkpoint #{cp.seq} covers {parsed.size} entries, "
                f"after {seen.size} entries were witnessed")
    proof: tuple[bytes, ...] = () if parsed.size == seen.size else cp.proof
    if parsed.size > seen.size and cp.proof_from != seen.size:
        return (f"its checkpoint #{cp.seq} of {parsed.size} entries has no consistency proof from the "
                f"{seen.size} entries witnessed (its proof starts at {cp.proof_from}): its log was "
                "rolled back or replaced")
    if not merkle.verify_consistency(seen.size, parsed.size, root, parsed.root, proof):
        return (f"its audit log was forked or rewritten: checkpoint #{cp.seq} of {parsed.size} entries "
                f"does not extend the {seen.size} entries witnessed (the consistency proof fails)")
    return None


class Witness:
    def __init__(self, board: CheckpointBoard, audit: AuditLog, *, box: str,
                 signing_key: Callable[[], Ed25519PrivateKey], state_path: Path, on_fork: OnFork,
                 clock: Callable[[], float] = time.time) -> None:
        self.board = board
        self.audit = audit
        self.box = box
        self.name = witness_name(audit.origin)
        self.signing_key = signing_key
        self.state_path = Path(state_path)
        self.on_fork = on_fork
        self.clock = clock
        self.seen: dict[str, Seen] = _load(self.state_path)

    async def publish(self) -> Published | None:
        """Publish the log's newest checkpoint if it is not the last one this box published."""
        note = await self.audit.latest_checkpoint()
        if note is None:
            return None
        last = await self.board.last_published(self.box)
        if last is not None and last.note == note:
            return None
        size = cpmod.parse(note).size
        proof_from: int | None = None
        proof: list[bytes] = []
        if last is not None and 0 < last.tree_size <= size:
            made = await self.audit.consistency(last.tree_size, size)
            proof_from, proof = last.tree_size, [bytes.fromhex(h) for h in made["hashes"]]
        elif last is not None:
            log.error("fleet: this box's audit log has %d entries, fewer than the %d it published before: "
                      "the other boxes will report it as rolled back", size, last.tree_size)
        public_key = self.signing_key().public_key().public_bytes_raw()
        chain = None
        if last is not None and last.public_key != public_key:  # keys.rotate since: prove the new key
            chain = await rotation.evidence(self.audit, last.public_key, public_key, size)
            if chain is None:
                log.error("fleet: this box's audit log holds no rotation from the key it published with before "
                          "to its current key: the other boxes will refuse its checkpoints")
        seq = await self.board.publish(self.box, size, note, public_key, proof_from, proof, chain)
        return Published(seq, self.box, size, note, public_key, proof_from, tuple(proof), chain)

    async def witness(self) -> list[tuple[Published, str | None]]:
        """Check (and cosign) what the other boxes published since the last pass: (checkpoint, refusal)."""
        cursors = {box: seen.cursor for box, seen in self.seen.items()}
        verdicts: list[tuple[Published, str | None]] = []
        try:
            for cp in await self.board.since(self.box, cursors):
                seen = self.seen.setdefault(cp.box, Seen())
                parsed, problem, key = judge(seen, cp)
                if problem is None and parsed is not None:
                    await self._cosign(cp, parsed, key, seen)
                    seen.flagged = None
                elif seen.flagged is None:
                    await self.on_fork(cp.box, f"box {cp.box!r}: {problem}", {
                        "box": cp.box, "checkpoint": cp.seq, "tree_size": cp.tree_size,
                        "witnessed_size": seen.size, "witnessed_root": seen.root})
                    seen.flagged = problem
                else:
                    log.warning("fleet: box %r: %s", cp.box, problem)
                seen.cursor = cp.seq  # only once handled: a pass cut short takes this one again
                verdicts.append((cp, problem))
        finally:
            if verdicts:
                await asyncio.to_thread(self._save)
        return verdicts

    async def _cosign(self, cp: Published, parsed: cpmod.Checkpoint, verified_by: bytes, seen: Seen) -> None:
        key = self.signing_key()
        line = cosignature.cosign(self.name, key, parsed.text, int(self.clock()))
        await self.board.cosign(cp.seq, self.box, self.name, key.public_key().public_bytes_raw(), line)
        seen.key = base64.b64encode(verified_by).decode()  # first sight, or the key its rotation proved
        seen.origin = parsed.origin
        seen.size, seen.root = parsed.size, base64.b64encode(parsed.root).decode()

    async def beat(self) -> None:
        """One pass; while the database is down the member's `fleet.unreachable` alarm says so."""
        try:
            await self.publish()
            await self.witness()
        except FleetUnavailable as exc:
            log.debug("fleet witness: %s", exc)

    async def run(self, interval: float) -> None:
        while True:
            await self.beat()
            await asyncio.sleep(interval)

    def _save(self) -> None:
        state = {"format": STATE_FORMAT, "boxes": {box: asdict(seen) for box, seen in sorted(self.seen.items())}}
        atomic_write(self.state_path, json.dumps(state, indent=1).encode())


def _load(path: Path) -> dict[str, Seen]:
    try:
        state = json.loads(path.read_bytes())
        if not isinstance(state, dict) or state.get("format") != STATE_FORMAT:
            raise ValueError(f"not {STATE_FORMAT}")
        return {str(box): Seen(**seen) for box, seen in state.get("boxes", {}).items()}
    except FileNotFoundError:
        return {}
    except (ValueError, TypeError, AttributeError) as exc:
        raise WitnessStateError(f"{path} is not a fleet witness state ({exc}); move it away to witness afresh "
                         "(this box then pins every other box's key again on first sight)") from None


async def witnessed_notes(board: CheckpointBoard, box: str) -> list[tuple[str, str]]:
    """(checkpoint note, what to call it) of each of `box`'s checkpoints that another box cosigned
    with a cosignature that verifies under the key it gives: what `audit.verify` checks the log against."""
    out: list[tuple[str, str]] = []
    for cp, cosigned in await board.cosigned(box):
        try:
            body = cpmod.parse(cp.note).text
        except cpmod.CheckpointError:
            continue
        witnesses = []
        for c in cosigned:
            try:
                cosignature.verify(c.line, c.name, c.public_key, body)
                witnesses.append(c.witness)
            except cosignature.CosignatureError as exc:
                log.warning("fleet: a cosignature of box %r's checkpoint #%d by %r: %s", box, cp.seq, c.witness, exc)
        if witnesses:
            out.append((cp.note, f"the checkpoint of {cp.tree_size} entries witnessed by {', '.join(witnesses)}"))
    return out


Record = Callable[[None, str, str, dict[str, Any]], Awaitable[None]]
"""The daemon's audit append (assembly's ActionRecorder), as the daemon itself."""


def fork_alarm(bus: EventBus, record: Record) -> OnFork:
    """A box whose log was rolled back or forked: the critical alert `fleet.audit_fork.<box>` naming
    it, and a `fleet.audit_fork` entry in this box's own audit log."""
    async def report(box: str, reason: str, details: dict[str, Any]) -> None:
        log.critical("fleet: %s", reason)
        await record(None, "fleet.audit_fork", box, {**details, "reason": reason})
        raise_alarm(bus, f"fleet.audit_fork.{box}", reason, details)
    return report
