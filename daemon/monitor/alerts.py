"""Alerts: persisted in SQLite, deduplicated by key, acknowledged, streamed and audited.

A key ("host_memory", "gpu_memory:gpu0", "worker.crash_loop") has at most one open alert (state
`active` or `acked`). Raising it again while open adds to its count and moves its last-seen time
instead of making another; a higher severity re-opens an acknowledged one. Clearing closes it
(state `cleared`); the next raise starts a new alert with a new id.

Every change is published on the `alert` topic as {"kind", "alert"} (kinds: raised, repeated,
escalated, relaxed, acked, cleared) and audited through the daemon's callback as alert.raise,
alert.clear or alert.ack. A rule alert's last-seen time moves with every sample in memory and is
written at most every PERSIST_SEEN seconds, so a standing alert costs no write per sample.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Awaitable, Callable, Iterable
from typing import Any, Literal

import aiosqlite

from daemon.events import EventBus
from daemon.timefmt import rfc3339

log = logging.getLogger("sai.monitor.alerts")

SEVERITIES = ("info", "warning", "critical")
STATES = ("active", "acked", "cleared")
ListState = Literal["open", "active", "acked", "cleared", "all"]
PERSIST_SEEN = 30.0

Audit = Callable[[dict[str, Any] | None, str, str, dict[str, Any]], Awaitable[Any]]


async def _nothing_to_record() -> None:
    return None


SCHEMA = """
CREATE TABLE IF NOT EXISTS alerts (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    key         TEXT NOT NULL,
    rule        TEXT,
    subject     TEXT,
    severity    TEXT NOT NULL,
    state       TEXT NOT NULL,
    message     TEXT NOT NULL,
    details     TEXT NOT NULL DEFAULT '{}',
    count       INTEGER NOT NULL DEFAULT 1,
    first_seen  REAL NOT NULL,
    last_seen   REAL NOT NULL,
    acked_at    REAL,
    acked_by    TEXT,
    cleared_at  REAL
);
CREATE INDEX IF NOT EXISTS alerts_state ON alerts (state, last_seen);
CREATE INDEX IF NOT EXISTS alerts_key ON alerts (key, state);
"""

COLUMNS = ("id", "key", "rule", "subject", "severity", "state", "message", "details", "count", "first_seen",
           "last_seen", "acked_at", "acked_by", "cleared_at")


class AlertNotFound(LookupError):
    pass


def _row(row: Iterable[Any]) -> dict[str, Any]:
    record = dict(zip(COLUMNS, row))
    record["details"] = json.loads(record["details"] or "{}")
    record["acked_by"] = json.loads(record["acked_by"]) if record["acked_by"] else None
    return record


def view(record: dict[str, Any]) -> dict[str, Any]:
    """An alert as the API shows it: RFC 3339 times, `alert_id`, `acked` as a boolean."""
    out = {k: v for k, v in record.items() if k != "id"}
    out["alert_id"] = record["id"]
    for key in ("first_seen", "last_seen", "acked_at", "cleared_at"):
        out[key] = rfc3339(record[key])
    out["acked"] = record["acked_at"] is not None
    return out


class AlertBook:
    def __init__(self, db: aiosqlite.Connection, bus: EventBus | None, audit: Audit | None,
                 clock: Callable[[], float] = time.time, retain_days: float = 30.0) -> None:
        self.db = db
        self.bus = bus
        self.audit = audit
        self.clock = clock
        self.retain_days = retain_days
        self.open_alerts: dict[str, dict[str, Any]] = {}
        self.counts: dict[str, int] = {}
        """{"active", "acked", "critical", "warning"}: replaced whole on change (the exporter thread reads it)."""
        self._persisted_seen: dict[str, float] = {}
        self._lock = asyncio.Lock()

    @classmethod
    async def open(cls, db: aiosqlite.Connection, bus: EventBus | None, audit: Audit | None,
                   clock: Callable[[], float] = time.time, retain_days: float = 30.0) -> AlertBook:
        await db.executescript(SCHEMA)
        await db.commit()
        book = cls(db, bus, audit, clock, retain_days)
        rows = await db.execute_fetchall(
            f"SELECT {', '.join(COLUMNS)} FROM alerts WHERE state != 'cleared' ORDER BY id")
        for row in rows:
            record = _row(row)
            book.open_alerts[record["key"]] = record
            book._persisted_seen[record["key"]] = record["last_seen"]
        book._recount()
        await book.prune()
        return book

    def _recount(self) -> None:
        alerts = list(self.open_alerts.values())
        self.counts = {"active": sum(a["state"] == "active" for a in alerts),
                       "acked": sum(a["state"] == "acked" for a in alerts),
                       **{s: sum(a["severity"] == s for a in alerts) for s in SEVERITIES}}

    def _announce(self, kind: str, record: dict[str, Any], action: str | None,
                  actor: dict[str, Any] | None = None) -> Callable[[], Awaitable[None]]:
        """Publish the change now; return what records it in the audit log, for the caller to await
        once it has let go of the book's lock: while the audit log waits (on a lock another process
        holds, say), alerts must still be listed, and the alert that says so above all."""
        shown = view(record)
        if self.bus is not None and self.bus.wants("alert"):
            self.bus.publish("alert", {"kind": kind, "alert": shown})
        if not action or self.audit is None:
            return _nothing_to_record
        audit, subject = self.audit, f"alert:{record['id']}"
        details = {"key": record["key"], "severity": record["severity"], "message": record["message"],
                   "count": record["count"], "kind": kind}
        if record["details"]:
            details["details"] = record["details"]

        async def record_it() -> None:
            try:
                await audit(actor, action, subject, details)
            except Exception:  # the monitor must go on; the audit log reports its own failures
                log.exception("auditing %s of %s failed", action, subject)
        return record_it

    async def _update(self, record: dict[str, Any], *fields: str) -> None:
        values = [json.dumps(record[f]) if f in ("details", "acked_by") and record[f] is not None else record[f]
                  for f in fields]
        await self.db.execute(f"UPDATE alerts SET {', '.join(f'{f} = ?' for f in fields)} WHERE id = ?",
                              (*values, record["id"]))
        await self.db.commit()

    # -- raising and clearing -----------------------------------------------------------------

    async def raise_alert(self, key: str, severity: str, message: str, details: dict[str, Any] | None = None, *,
                          rule: str | None = None, subject: str | None = None, ts: float | None = None,
                          repeat: bool = True) -> dict[str, Any]:
        """Raise `key`, or count it again while open. `repeat=False` (rules changing level) changes
        the severity without counting a new occurrence. Returns the alert as the API shows it."""
        if severity not in SEVERITIES:
            raise ValueError(f"severity must be one of {', '.join(SEVERITIES)}, not {severity!r}")
        now = self.clock() if ts is None else ts
        details = dict(details or {})
        action: str | None
        async with self._lock:
            record = self.open_alerts.get(key)
            if record is None:
                cursor = await self.db.execute(
                    "INSERT INTO alerts (key, rule, subject, severity, state, message, details, count, first_seen, "
                    "last_seen) VALUES (?, ?, ?, ?, 'active', ?, ?, 1, ?, ?)",
                    (key, rule, subject, severity, message, json.dumps(details), now, now))
                await self.db.commit()
                record = {"id": cursor.lastrowid, "key": key, "rule": rule, "subject": subject,
                          "severity": severity, "state": "active", "message": message, "details": details,
                          "count": 1, "first_seen": now, "last_seen": now, "acked_at": None, "acked_by": None,
                          "cleared_at": None}
                self.open_alerts[key] = record
                self._persisted_seen[key] = now
                kind, action = "raised", "alert.raise"
            else:
                old = SEVERITIES.index(record["severity"])
                new = SEVERITIES.index(severity)
                kind = "escalated" if new > old else "relaxed" if new < old else "repeated"
                action = "alert.raise" if new > old else None
                if new > old and record["state"] == "acked":
                    record.update(state="active", acked_at=None, acked_by=None)
                record.update(severity=severity, message=message, details=details, last_seen=now,
                              count=record["count"] + (1 if repeat else 0))
                await self._update(record, "severity", "state", "message", "details", "count", "last_seen",
                                   "acked_at", "acked_by")
                self._persisted_seen[key] = now
            self._recount()
            audited, shown = self._announce(kind, record, action), view(record)
        await audited()  # enqueued before any other task runs: audit entries keep the book's order
        return shown

    async def clear(self, key: str, *, ts: float | None = None, reason: str | None = None) -> dict[str, Any] | None:
        """Close the open alert for `key`, if any; returns it as the API shows it, else None."""
        async with self._lock:
            record = self.open_alerts.pop(key, None)
            if record is None:
                return None
            self._persisted_seen.pop(key, None)
            record.update(state="cleared", cleared_at=self.clock() if ts is None else ts)
            if reason:
                record["details"] = {**record["details"], "cleared": reason}
            await self._update(record, "state", "cleared_at", "last_seen", "details")
            self._recount()
            audited, shown = self._announce("cleared", record, "alert.clear"), view(record)
        await audited()
        return shown

    def seen(self, key: str, ts: float, details: dict[str, Any] | None = None) -> None:
        """A standing rule alert observed again (in memory; written by `flush_seen`)."""
        record = self.open_alerts.get(key)
        if record is not None:
            record["last_seen"] = max(record["last_seen"], ts)
            if details:
                record["details"] = {**record["details"], **details}

    async def flush_seen(self, force: bool = False) -> None:
        async with self._lock:
            stale = [r for k, r in self.open_alerts.items()
                     if r["last_seen"] != self._persisted_seen.get(k)
                     and (force or r["last_seen"] - self._persisted_seen.get(k, 0.0) >= PERSIST_SEEN)]
            if not stale:
                return
            await self.db.executemany("UPDATE alerts SET last_seen = ?, details = ? WHERE id = ?",
                                      [(r["last_seen"], json.dumps(r["details"]), r["id"]) for r in stale])
            await self.db.commit()
            for record in stale:
                self._persisted_seen[record["key"]] = record["last_seen"]

    # -- acknowledging and listing ------------------------------------------------------------

    async def ack(self, alert_id: int, actor: dict[str, Any] | None) -> dict[str, Any]:
        """Acknowledge: recorded with who did it. Acking an acked alert changes nothing; a cleared
        one keeps its state but records the acknowledgement (it may have cleared a moment before)."""
        async with self._lock:
            record = next((r for r in self.open_alerts.values() if r["id"] == alert_id), None)
            if record is None:
                rows = await self.db.execute_fetchall(f"SELECT {', '.join(COLUMNS)} FROM alerts WHERE id = ?",
                                                      (alert_id,))
                if not rows:
                    raise AlertNotFound(f"no alert {alert_id}")
                record = _row(next(iter(rows)))
            if record["acked_at"] is not None:
                return view(record)
            record.update(acked_at=self.clock(), acked_by=actor)
            if record["state"] == "active":
                record["state"] = "acked"
            await self._update(record, "state", "acked_at", "acked_by")
            self._recount()
            audited, shown = self._announce("acked", record, "alert.ack", actor), view(record)
        await audited()
        return shown

    async def list(self, state: ListState = "open", limit: int = 100,
                   until: float | None = None) -> list[dict[str, Any]]:
        """Newest last-seen first. `until`: the alerts that were open at that moment, as they are now."""
        await self.flush_seen(force=True)
        where: list[str] = []
        params: list[float | str] = []
        if until is not None:
            where.append("first_seen <= ? AND (cleared_at IS NULL OR cleared_at > ?)")
            params += [until, until]
        if state == "open":
            where.append("state != 'cleared'")
        elif state != "all":
            where.append("state = ?")
            params.append(state)
        sql = f"SELECT {', '.join(COLUMNS)} FROM alerts"
        if where:
            sql += " WHERE " + " AND ".join(where)
        rows = await self.db.execute_fetchall(sql + " ORDER BY last_seen DESC, id DESC LIMIT ?", (*params, limit))
        return [view(_row(row)) for row in rows]

    def get_open(self, key: str) -> dict[str, Any] | None:
        record = self.open_alerts.get(key)
        return None if record is None else view(record)

    async def prune(self) -> int:
        cutoff = self.clock() - self.retain_days * 86400
        cursor = await self.db.execute("DELETE FROM alerts WHERE state = 'cleared' AND cleared_at < ?", (cutoff,))
        await self.db.commit()
        return cursor.rowcount
