"""Copying a file while hashing it, onto the disk in small steps.

The daemon fsyncs its databases on every commit; a copy that leaves hundreds of megabytes dirty
and flushes them at once holds those commits up behind it (bench/backup.py measures submits while
a backup runs). Flushing every `SYNC_EVERY` bytes keeps each flush short.
"""

from __future__ import annotations

import hashlib
import os
from typing import BinaryIO

CHUNK = 1 << 20
SYNC_EVERY = 8 << 20


def copy_hashed(src: BinaryIO, dst: BinaryIO) -> tuple[int, str]:
    """Copy `src` to `dst` (flushed and fsynced at the end); (bytes copied, SHA-256 hex)."""
    digest, size, unsynced = hashlib.sha256(), 0, 0
    while chunk := src.read(CHUNK):
        digest.update(chunk)
        dst.write(chunk)
        size += len(chunk)
        unsynced += len(chunk)
        if unsynced >= SYNC_EVERY:
            dst.flush()
            os.fdatasync(dst.fileno())
            unsynced = 0
    dst.flush()
    os.fsync(dst.fileno())
    return size, digest.hexdigest()
