"""Crash-safe file writes: temp file in the same directory, fsync, rename, fsync the directory.

After `atomic_write` returns, the file is complete on disk under its final name; if it raises (or
the process dies) the final name either does not exist or still holds its previous content. Temp
files are named `.<name>.tmp-<random>` so that `remove_stale_temps` can clear a crash's leftovers.
Modes are set exactly, whatever the umask: the daemon's files are its user's alone.
"""

from __future__ import annotations

import logging
import os
import secrets
from pathlib import Path

TEMP_MARK = ".tmp-"
PRIVATE_UMASK = 0o077
"""The daemon's umask: what SQLite, logs and the model builder create is mode 0600 / 0700."""

log = logging.getLogger("sai.files")


def fsync_dir(directory: Path) -> None:
    """Make a rename or unlink in `directory` durable."""
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def ensure_dir(directory: Path, mode: int = 0o700) -> Path:
    """Create `directory` (and parents) if needed and set its mode exactly (umask ignored)."""
    directory.mkdir(parents=True, exist_ok=True)
    if (directory.stat().st_mode & 0o777) != mode:
        os.chmod(directory, mode)
    return directory


def narrow_to_owner(directory: Path) -> list[str]:
    """Take group and other bits off the regular files directly in `directory` (symlinks are
    left alone); return what was narrowed, as "name (was 0644)", and log it."""
    narrowed = []
    for entry in os.scandir(directory):
        if entry.is_file(follow_symlinks=False) and (mode := entry.stat(follow_symlinks=False).st_mode & 0o777) & 0o077:
            os.chmod(entry.path, mode & 0o700)
            narrowed.append(f"{entry.name} (was {mode:04o})")
    if narrowed:
        log.warning("other users could read files in %s; now only their owner can: %s", directory, ", ".join(narrowed))
    return narrowed


def _write_all(fd: int, data: bytes | memoryview) -> None:
    view = memoryview(data)
    while view:
        written = os.write(fd, view)
        view = view[written:]


def atomic_write(path: Path, data: bytes | memoryview, mode: int = 0o600, *, overwrite: bool = True) -> Path:
    """Write `data` to `path` atomically with permission bits `mode`.

    `overwrite=False` refuses to replace an existing file (FileExistsError) — used for outputs,
    which are written once. The check-then-rename is race-free for a single writer, which is the
    daemon's case (one process, one file per job/index).
    """
    path = Path(path)
    directory = path.parent
    if not overwrite and path.exists():
        raise FileExistsError(f"{path} already exists; outputs are written once")
    tmp = directory / f".{path.name}{TEMP_MARK}{secrets.token_hex(6)}"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, mode)
    try:
        try:
            os.fchmod(fd, mode)  # the umask may have narrowed or widened what os.open set
            _write_all(fd, data)
            os.fsync(fd)
        finally:
            os.close(fd)
        if not overwrite and path.exists():
            raise FileExistsError(f"{path} already exists; outputs are written once")
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    fsync_dir(directory)
    return path


def remove_stale_temps(directory: Path) -> list[Path]:
    """Delete temp files a crash left in `directory` (call at start-up, before writing)."""
    removed: list[Path] = []
    if not directory.is_dir():
        return removed
    for entry in directory.iterdir():
        if entry.name.startswith(".") and TEMP_MARK in entry.name and entry.is_file():
            entry.unlink(missing_ok=True)
            removed.append(entry)
    if removed:
        fsync_dir(directory)
    return removed
