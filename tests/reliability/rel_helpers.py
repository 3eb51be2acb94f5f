"""Helpers of the crash and fault suites: aiming a SIGKILL at a moment that matters, checking
what a state directory holds afterwards, and causing faults for real (a small filesystem, a
database locked by another process)."""

from __future__ import annotations

import ctypes
import hashlib
import os
import select
import struct
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from daemon.client import DaemonClient

IN_MODIFY = 0x00000002
IN_MOVED_TO = 0x00000080
IN_CREATE = 0x00000100
_EVENT = struct.Struct("iIII")
OUTPUT_SUFFIXES = ("png.sai", "manifest.json", "manifest.sig")
TEMP_MARKS = (".tmp-", ".tmp", ".next")


class DirWatch:
    """inotify on one directory (Linux, through libc): `fire_on` runs an action in the same
    thread the moment a matching event arrives, so a kill lands within microseconds of it."""

    def __init__(self, directory: Path, mask: int) -> None:
        libc = ctypes.CDLL(None, use_errno=True)
        self._fd = libc.inotify_init1(os.O_NONBLOCK | os.O_CLOEXEC)
        if self._fd < 0:
            raise OSError(ctypes.get_errno(), f"inotify_init1: {os.strerror(ctypes.get_errno())}")
        if libc.inotify_add_watch(self._fd, os.fsencode(directory), mask) < 0:
            os.close(self._fd)
            raise OSError(ctypes.get_errno(), f"inotify_add_watch {directory}: {os.strerror(ctypes.get_errno())}")

    def _names(self, timeout: float) -> list[str]:
        ready, _, _ = select.select([self._fd], [], [], timeout)
        if not ready:
            return []
        try:
            data = os.read(self._fd, 64 * 1024)
        except BlockingIOError:
            return []
        names, offset = [], 0
        while offset < len(data):
            _, _, _, length = _EVENT.unpack_from(data, offset)
            offset += _EVENT.size
            names.append(data[offset:offset + length].rstrip(b"\0").decode(errors="replace"))
            offset += length
        return names

    def fire_on(self, match: Callable[[str], bool], action: Callable[[], Any], timeout: float,
                stop: Callable[[], bool] = lambda: False) -> str | None:
        """Block until an event names a file `match` accepts, run `action` at once and return the
        name; None (action not run) after `timeout` seconds or once `stop()` is true."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and not stop():
            for name in self._names(min(0.05, max(0.0, deadline - time.monotonic()))):
                if match(name):
                    action()
                    return name
        return None

    def close(self) -> None:
        os.close(self._fd)


def temp_files(root: Path) -> list[Path]:
    """Files an unfinished atomic write or key rotation would leave anywhere under `root`."""
    return [p for p in root.rglob("*") if p.is_file() and any(mark in p.name for mark in TEMP_MARKS)]


def output_files(outputs_dir: Path) -> dict[str, dict[int, set[str]]]:
    """job id -> image index -> the suffixes present (`png.sai`, `manifest.json`, `manifest.sig`)."""
    found: dict[str, dict[int, set[str]]] = {}
    for path in outputs_dir.iterdir():
        if path.name.startswith("."):
            continue
        stem, _, suffix = path.name.partition(".")
        job_id, _, index = stem.rpartition("-")
        found.setdefault(job_id, {}).setdefault(int(index), set()).add(suffix)
    return found


def incomplete_outputs(outputs_dir: Path) -> list[str]:
    """`<job>-<n>` whose three files are not all present (an output interrupted between files)."""
    return sorted(f"{job}-{index}" for job, images in output_files(outputs_dir).items()
                  for index, suffixes in images.items() if suffixes != set(OUTPUT_SUFFIXES))


def snapshot(root: Path, skip: tuple[str, ...] = ("daemon.lock",)) -> dict[str, str]:
    """Relative path -> SHA-256 of every regular file under `root` (to prove nothing changed)."""
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file() and not p.is_symlink() and p.name not in skip}


async def tail_all(client: DaemonClient, action: str) -> list[dict[str, Any]]:
    """Every audit entry of `action`, oldest first (audit.tail pages backwards 1000 at a time)."""
    entries: list[dict[str, Any]] = []
    before: int | None = None
    while True:
        params: dict[str, Any] = {"limit": 1000, "action": action}
        if before is not None:
            params["before_seq"] = before
        page = (await client.call("audit.tail", **params))["entries"]
        entries[:0] = page
        if len(page) < 1000:
            return entries
        before = page[0]["seq"]


async def export_png(client: DaemonClient, job_id: str, index: int) -> tuple[bytes, str]:
    """An output's decrypted PNG through output.export (every chunk), and the sha256 it reported."""
    import base64

    data, offset = b"", 0
    while True:
        chunk = await client.call("output.export", job_id=job_id, index=index, offset=offset)
        data += base64.b64decode(chunk["data"])
        offset = len(data)
        if chunk["eof"]:
            return data, chunk["sha256"]


def hold_exclusive_lock(database: Path, seconds: float) -> subprocess.Popen[str]:
    """A second process that holds `BEGIN EXCLUSIVE` on `database` for `seconds`; returns once it
    holds the lock. Its stdout says `released` when it lets go."""
    code = ("import sqlite3, sys, time\n"
            "db = sqlite3.connect(sys.argv[1], isolation_level=None, timeout=30)\n"
            "db.execute('BEGIN EXCLUSIVE')\n"
            "print('locked', flush=True)\n"
            "time.sleep(float(sys.argv[2]))\n"
            "db.execute('ROLLBACK')\n"
            "print('released', flush=True)\n")
    holder = subprocess.Popen([sys.executable, "-c", code, str(database), str(seconds)],
                              stdout=subprocess.PIPE, text=True)
    assert holder.stdout is not None
    line = holder.stdout.readline().strip()
    if line != "locked":
        holder.kill()
        raise RuntimeError(f"the lock holder did not take the lock on {database}: {line!r}")
    return holder


@contextmanager
def small_tmpfs(mountpoint: Path, size_kib: int) -> Iterator[bool]:
    """Mount a `size_kib` KiB tmpfs on `mountpoint` (created if missing); yields False, mounting
    nothing, where this user may not mount. Unmounted (lazily) on exit."""
    mountpoint.mkdir(parents=True, exist_ok=True)
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size_kib}k,mode=0700", "tmpfs", str(mountpoint)],
                          capture_output=True, text=True)
    try:
        yield done.returncode == 0
    finally:
        if done.returncode == 0:
            subprocess.run(["umount", "-l", str(mountpoint)], capture_output=True)


def limit_file_size(pid: int, limit: int | None) -> None:
    """RLIMIT_FSIZE (the soft limit) of a running process; None lifts it to the hard limit. Past
    it, the process's writes fail with EFBIG (Python ignores SIGXFSZ), the way writes to a full
    disk fail with ENOSPC."""
    import resource

    _, hard = resource.prlimit(pid, resource.RLIMIT_FSIZE)
    resource.prlimit(pid, resource.RLIMIT_FSIZE, (hard if limit is None else limit, hard))
