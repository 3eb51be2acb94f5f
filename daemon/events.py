"""Publish/subscribe for the event topics that clients follow (`events.subscribe`)."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any

from daemon.protocol import TOPICS

log = logging.getLogger("sai.events")


class Subscription:
    """One client's feed. A client that stops reading loses progress events first; if even
    state changes back up, the feed is closed so the client reconnects and reloads."""

    def __init__(self, topics: set[str], maxsize: int = 2048) -> None:
        self.topics = topics
        self.queue: asyncio.Queue[tuple[str, dict[str, Any]] | None] = asyncio.Queue(maxsize)
        self.overflowed = False

    def offer(self, topic: str, data: dict[str, Any]) -> None:
        if self.overflowed or topic not in self.topics:
            return
        if self.queue.full():
            if data.get("kind") == "progress":
                return
            self.overflowed = True
            while not self.queue.empty():
                self.queue.get_nowait()
            self.queue.put_nowait(None)
            return
        self.queue.put_nowait((topic, data))

    async def get(self) -> tuple[str, dict[str, Any]] | None:
        return await self.queue.get()


Listener = Callable[[str, dict[str, Any]], None]


class EventBus:
    def __init__(self) -> None:
        self._subs: set[Subscription] = set()
        self._listeners: list[tuple[frozenset[str], Listener]] = []
        self.published = 0

    def listen(self, topics: set[str], listener: Listener) -> None:
        """Call `listener(topic, data)` in the publisher's turn for every event on `topics`, for the
        daemon's own counters (the metrics): unlike a subscription it never lags nor overflows, so
        it must be quick and must not keep `data`."""
        self._listeners.append((frozenset(topics), listener))

    def subscribe(self, topics: set[str]) -> Subscription:
        unknown = topics - set(TOPICS)
        if unknown:
            raise ValueError(f"unknown topic {sorted(unknown)[0]!r}; topics: {', '.join(TOPICS)}")
        sub = Subscription(topics)
        self._subs.add(sub)
        return sub

    def unsubscribe(self, sub: Subscription) -> None:
        self._subs.discard(sub)

    def wants(self, topic: str) -> bool:
        """Whether anyone follows `topic`: publishers skip building events nobody reads."""
        return any(topic in sub.topics for sub in self._subs) or any(topic in t for t, _ in self._listeners)

    def publish(self, topic: str, data: dict[str, Any]) -> None:
        self.published += 1
        for topics, listener in self._listeners:
            if topic in topics:
                try:
                    listener(topic, data)
                except Exception:
                    log.exception("event listener failed on a %r event", topic)
        for sub in list(self._subs):
            sub.offer(topic, data)
