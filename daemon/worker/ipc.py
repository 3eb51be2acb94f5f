"""Framing between the daemon and its worker: one JSON object per line, optional raw payload.

A message with `"nbytes": N` is followed by exactly N raw bytes (an image as H×W×3 uint8), so
pixels cross the pipe without base64 and without touching the 1 MiB client line limit.
"""

from __future__ import annotations

import asyncio
import json
import threading
from typing import Any, BinaryIO


def pack(message: dict[str, Any], payload: bytes | None = None) -> bytes:
    if payload is not None:
        message = {**message, "nbytes": len(payload)}
    line = json.dumps(message, separators=(",", ":")).encode() + b"\n"
    return line + payload if payload is not None else line


class SyncWriter:
    """Thread-safe writer for the worker's side (progress comes from the pipeline's thread)."""

    def __init__(self, stream: BinaryIO) -> None:
        self._stream = stream
        self._lock = threading.Lock()

    def send(self, message: dict[str, Any], payload: bytes | None = None) -> None:
        data = pack(message, payload)
        with self._lock:
            self._stream.write(data)
            self._stream.flush()


async def read_message(reader: asyncio.StreamReader) -> tuple[dict[str, Any], bytes | None] | None:
    """The next message and its payload, or None at end of stream."""
    line = await reader.readline()
    if not line:
        return None
    message = json.loads(line)
    nbytes = message.get("nbytes")
    payload = await reader.readexactly(nbytes) if nbytes else None
    return message, payload
