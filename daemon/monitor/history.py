"""Per-minute aggregates of every numeric figure in the samples, kept in SQLite for `history_days`.

A sample is flattened to dotted names ("host.memory.used", "gpus.0.temperature"); each minute keeps
count, sum, min and max per name. Samples accumulate in memory and are written when the minute
rolls over (one executemany, one commit), and before a query; rows older than the retention are
pruned hourly. A query regroups the minutes into `step`-second buckets and answers points shaped
like a sample (averages), with "min" and "max" by dotted name and "n" (samples in the bucket)
beside them, so a graph reads points and live samples alike.
"""

from __future__ import annotations

import math
import time
from collections import defaultdict
from collections.abc import Callable
from typing import Any

import aiosqlite

from daemon.timefmt import parse_rfc3339, rfc3339

SKIP = frozenset({"ts", "pid", "index", "interval", "count", "processes", "power_limit_w", "window_seconds"})
MAX_POINTS = 20_000
PRUNE_EVERY = 3600.0

SCHEMA = """
CREATE TABLE IF NOT EXISTS minutes (
    minute INTEGER NOT NULL,   -- epoch seconds of the minute's start
    name   TEXT NOT NULL,
    n      INTEGER NOT NULL,
    sum    REAL NOT NULL,
    min    REAL NOT NULL,
    max    REAL NOT NULL,
    PRIMARY KEY (minute, name)
) WITHOUT ROWID;
"""

UPSERT = """
INSERT INTO minutes (minute, name, n, sum, min, max) VALUES (?, ?, ?, ?, ?, ?)
ON CONFLICT (minute, name) DO UPDATE SET
    n = n + excluded.n, sum = sum + excluded.sum,
    min = MIN(min, excluded.min), max = MAX(max, excluded.max)
"""


def parse_time(value: float | int | str, name: str = "time") -> float:
    """Epoch seconds (a number, or a numeric string) or RFC 3339 text, as epoch seconds."""
    if isinstance(value, bool):
        raise ValueError(f"{name} must be epoch seconds or RFC 3339 text, not a boolean")
    if isinstance(value, (int, float)):
        result = float(value)
    else:
        try:
            result = float(value)
        except ValueError:
            try:
                result = parse_rfc3339(value)
            except ValueError:
                raise ValueError(f"{name} {value!r} is neither epoch seconds nor RFC 3339 "
                                 "(e.g. 2026-11-26T10:00:00Z)") from None
    if not math.isfinite(result):
        raise ValueError(f"{name} must be finite")
    return result


def flatten(sample: dict[str, Any], prefix: str = "") -> dict[str, float]:
    """Numeric leaves by dotted name; GPUs by their index. Booleans, text and "n/a" are left out."""
    out: dict[str, float] = {}
    for key, value in sample.items():
        if key in SKIP:
            continue
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(flatten(value, name + "."))
        elif key == "gpus" and isinstance(value, list):
            for position, gpu in enumerate(value):
                out.update(flatten(gpu, f"{name}.{gpu.get('index', position)}."))
        elif isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
            out[name] = float(value)
    return out


def nest(flat: dict[str, float]) -> dict[str, Any]:
    """The inverse of `flatten`: {"gpus.0.memory.used": 1} -> {"gpus": [{"index": 0, "memory": {"used": 1}}]}."""
    tree: dict[str, Any] = {}
    gpus: dict[int, dict[str, Any]] = {}
    for name, value in sorted(flat.items()):
        parts = name.split(".")
        if parts[0] == "gpus" and len(parts) > 2 and parts[1].isdigit():
            node = gpus.setdefault(int(parts[1]), {"index": int(parts[1])})
            parts = parts[2:]
        else:
            node = tree
        for part in parts[:-1]:
            node = node.setdefault(part, {})
        node[parts[-1]] = value
    if gpus:
        tree["gpus"] = [gpus[i] for i in sorted(gpus)]
    return tree


class History:
    def __init__(self, db: aiosqlite.Connection, days: float, clock: Callable[[], float] = time.time) -> None:
        self.db = db
        self.days = days
        self.clock = clock
        self._minute: int | None = None
        self._acc: dict[str, list[float]] = {}
        self._pruned_at = float("-inf")

    @classmethod
    async def open(cls, db: aiosqlite.Connection, days: float,
                   clock: Callable[[], float] = time.time) -> History:
        await db.executescript(SCHEMA)
        await db.commit()
        history = cls(db, days, clock)
        await history.prune()
        return history

    async def add(self, sample: dict[str, Any]) -> None:
        """Fold a sample into its minute; write the previous minute once a new one starts."""
        minute = int(sample["ts"] // 60) * 60
        if self._minute is not None and minute != self._minute:
            await self.flush()
        self._minute = minute
        for name, value in flatten(sample).items():
            acc = self._acc.get(name)
            if acc is None:
                self._acc[name] = [1, value, value, value]
            else:
                acc[0] += 1
                acc[1] += value
                acc[2] = min(acc[2], value)
                acc[3] = max(acc[3], value)
        if self.clock() - self._pruned_at >= PRUNE_EVERY:
            await self.prune()

    async def flush(self) -> None:
        """Write what the current minute has so far (merged into its row if part was written before)."""
        if self._minute is None or not self._acc:
            return
        minute, acc = self._minute, self._acc
        self._acc = {}
        await self.db.executemany(UPSERT, [(minute, name, int(a[0]), a[1], a[2], a[3]) for name, a in acc.items()])
        await self.db.commit()

    async def prune(self) -> int:
        self._pruned_at = self.clock()
        cutoff = int((self.clock() - self.days * 86400) // 60) * 60
        cursor = await self.db.execute("DELETE FROM minutes WHERE minute < ?", (cutoff,))
        await self.db.commit()
        return cursor.rowcount

    async def query(self, since: float, until: float, step: int) -> list[dict[str, Any]]:
        """Points of `step` seconds (a multiple of 60) from `since` to `until`, oldest first."""
        if step < 60 or step % 60:
            raise ValueError("step must be a multiple of 60 seconds, at least 60")
        if until < since:
            raise ValueError("until is before since")
        if (until - since) / step > MAX_POINTS:
            raise ValueError(f"more than {MAX_POINTS} points: use a larger step or a shorter range")
        await self.flush()
        lo = int(since // step) * step
        rows = await self.db.execute_fetchall(
            "SELECT (minute / ?) * ? AS bucket, name, SUM(n), SUM(sum), MIN(min), MAX(max) FROM minutes "
            "WHERE minute >= ? AND minute <= ? GROUP BY bucket, name ORDER BY bucket",
            (step, step, lo, int(until)))
        buckets: dict[int, dict[str, tuple[int, float, float, float]]] = defaultdict(dict)
        for bucket, name, n, total, low, high in rows:
            buckets[int(bucket)][name] = (int(n), total, low, high)
        points = []
        for bucket, series in sorted(buckets.items()):
            point = nest({name: round(s[1] / s[0], 3) for name, s in series.items()})
            point.update(ts=float(bucket), time=rfc3339(bucket), step=step,
                         n=max(s[0] for s in series.values()),
                         min={name: s[2] for name, s in series.items()},
                         max={name: s[3] for name, s in series.items()})
            points.append(point)
        return points
