"""The in-memory ring of recent samples (about ten minutes at one per second)."""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Iterator
from typing import Any

Sample = dict[str, Any]


class Ring:
    """Fixed capacity, oldest dropped first. Samples are not changed once appended, so a reader in
    another thread (the Prometheus exporter) may take `latest()` without a lock."""

    def __init__(self, seconds: float, interval: float) -> None:
        self.capacity = max(1, math.ceil(seconds / interval))
        self._items: deque[Sample] = deque(maxlen=self.capacity)

    def append(self, sample: Sample) -> None:
        self._items.append(sample)

    def latest(self) -> Sample | None:
        try:
            return self._items[-1]
        except IndexError:
            return None

    def since(self, ts: float | None = None) -> list[Sample]:
        """Samples with `ts` at or after `ts` (all when None), oldest first."""
        items = list(self._items)
        if ts is None:
            return items
        return [s for s in items if s["ts"] >= ts]

    def __len__(self) -> int:
        return len(self._items)

    def __iter__(self) -> Iterator[Sample]:
        return iter(list(self._items))
