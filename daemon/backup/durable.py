"""Many new files made durable at once: syncfs(2) on the filesystem that holds them.

A backup writes thousands of files into a directory that only becomes the backup when it is
renamed at the end; one syncfs before that rename costs one flush, where an fsync per file
costs one journal commit each (bench/backup.py).
"""

from __future__ import annotations

import ctypes
import os

_libc = ctypes.CDLL(None, use_errno=True)


def sync_filesystem(fd: int) -> None:
    """Everything written so far on the filesystem of `fd` is on disk when this returns."""
    syncfs = getattr(_libc, "syncfs", None)
    if syncfs is None:
        os.sync()
        return
    if syncfs(fd) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))
