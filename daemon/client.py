"""Asyncio client for the daemon's socket, used by the CLI and the console.

    async with await DaemonClient.connect(path) as client:
        job = await client.call("job.submit", prompt="a lighthouse")
        async for event in client.subscribe(["job"]):
            ...
"""

from __future__ import annotations

import asyncio
import itertools
import os
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from daemon import protocol
from daemon.protocol import RpcError

UNAVAILABLE_MESSAGE = "no daemon answers on {path}: start one with `sai daemon` (or run `sai`, which embeds one)"


class DaemonUnavailable(ConnectionError):
    """Nothing answers on the socket, or the connection was lost."""


class DaemonClient:
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, path: str) -> None:
        self.path = path
        self._reader = reader
        self._writer = writer
        self._ids = itertools.count(1)
        self._pending: dict[int, asyncio.Future[Any]] = {}
        self._events: asyncio.Queue[dict[str, Any] | None] = asyncio.Queue()
        self._write_lock = asyncio.Lock()
        self._closed = False
        self._reader_task = asyncio.create_task(self._read_loop(), name="sai-client-reader")

    @classmethod
    async def connect(cls, path: str | os.PathLike[str], timeout: float = 5.0) -> DaemonClient:
        path = str(path)
        try:
            reader, writer = await asyncio.wait_for(
                asyncio.open_unix_connection(path, limit=protocol.STREAM_LIMIT), timeout)
        except (TimeoutError, FileNotFoundError, ConnectionRefusedError) as exc:
            raise DaemonUnavailable(UNAVAILABLE_MESSAGE.format(path=path)) from exc
        except PermissionError as exc:
            raise DaemonUnavailable(f"not allowed to connect to {path}: {exc.strerror} "
                                    "(ask an admin to add you to the socket's group)") from exc
        return cls(reader, writer, path)

    async def __aenter__(self) -> DaemonClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    @property
    def closed(self) -> bool:
        return self._closed

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._reader_task.cancel()
        self._writer.close()
        try:
            await self._writer.wait_closed()
        except (ConnectionError, BrokenPipeError):
            pass
        self._fail_pending(DaemonUnavailable(f"connection to {self.path} closed"))

    def _fail_pending(self, exc: Exception) -> None:
        for fut in self._pending.values():
            if not fut.done():
                fut.set_exception(exc)
        self._pending.clear()
        self._events.put_nowait(None)

    async def _read_loop(self) -> None:
        try:
            while True:
                line = await self._reader.readline()
                if not line:
                    break
                try:
                    message = protocol.decode(line)
                except RpcError:
                    continue
                self._dispatch(message)
        except (ConnectionError, ValueError, asyncio.LimitOverrunError):
            pass
        except asyncio.CancelledError:
            return
        self._closed = True
        self._fail_pending(DaemonUnavailable(f"the daemon on {self.path} closed the connection"))

    def _dispatch(self, message: Any) -> None:
        for item in message if isinstance(message, list) else [message]:
            if not isinstance(item, dict):
                continue
            if item.get("method") == "event":
                params = item.get("params") or {}
                self._events.put_nowait(params)
                continue
            fut = self._pending.pop(item.get("id"), None)  # type: ignore[arg-type]
            if fut is None or fut.done():
                continue
            if "error" in item:
                fut.set_exception(RpcError.from_json(item["error"]))
            else:
                fut.set_result(item.get("result"))

    async def send_raw(self, data: bytes) -> None:
        """Write bytes as they are (tests of the daemon's framing)."""
        async with self._write_lock:
            self._writer.write(data)
            await self._writer.drain()

    async def call(self, method: str, /, **params: Any) -> Any:
        """Call a method and return its result; raise RpcError with the daemon's message."""
        if self._closed:
            raise DaemonUnavailable(f"connection to {self.path} is closed")
        req_id = next(self._ids)
        fut: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._pending[req_id] = fut
        try:
            await self.send_raw(protocol.encode(protocol.request(method, params, req_id)))
        except (ConnectionError, BrokenPipeError) as exc:
            self._pending.pop(req_id, None)
            raise DaemonUnavailable(f"lost the connection to {self.path}: {exc}") from exc
        return await fut

    async def subscribe(self, topics: list[str]) -> AsyncIterator[dict[str, Any]]:
        """Subscribe, then yield `{"topic", "data"}` for each event until the connection ends."""
        await self.call("events.subscribe", topics=topics)
        async for event in self.events():
            yield event

    async def events(self) -> AsyncIterator[dict[str, Any]]:
        while True:
            event = await self._events.get()
            if event is None:
                return
            yield event

    async def next_event(self, timeout: float | None = None) -> dict[str, Any] | None:
        """One event, or None when the connection has ended. (`asyncio.timeout`, not `wait_for`: on
        Python 3.11 `wait_for` drops a cancel that lands as the event arrives.)"""
        async with asyncio.timeout(timeout):
            return await self._events.get()


async def connect(path: str | Path, timeout: float = 5.0) -> DaemonClient:
    return await DaemonClient.connect(path, timeout)
