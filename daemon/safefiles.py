"""The daemon's file writes, in one bottom-layer module that crypto/, audit/, outputs/, backup/
and the service import (nothing here imports another part of the daemon but `ownership`).

Crash-safe writes: `atomic_write` writes a temp file in the same directory, fsyncs it, renames it
and fsyncs the directory. After it returns, the file is complete on disk under its final name; if
it raises (or the process dies) the final name either does not exist or still holds its previous
content. Temp files are named `.<name>.tmp-<random>` so that `remove_stale_temps` can clear a
crash's leftovers. Modes are set exactly, whatever the umask: the daemon's files are its user's alone.

Files created where other users may have been first: never through a symlink, never into a
file someone else made. `read_nofollow` reads a file, never through a symlink. `open_lock` opens
a lock file with O_NOFOLLOW and checks it is a regular file of ours with one link (a planted
symlink or hard link to a root file is refused, not truncated). `PrivateDir` writes a set of files
in a new 0700 directory beside their destination, by directory descriptor and with
O_EXCL|O_NOFOLLOW, then renames the whole onto the destination: nothing another user plants in
the destination or the parent during the write is ever opened, and a rename of the temp
directory under us moves our files, not our writes.
"""

from __future__ import annotations

import errno
import logging
import os
import secrets
import shutil
import stat
from pathlib import Path
from types import TracebackType
from typing import BinaryIO

from daemon.ownership import UnsafePath, user_name

DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
NEW_FILE = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC

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


def atomic_write(path: Path, data: bytes | memoryview, mode: int = 0o600, *, overwrite: bool = True,
                 sync_dir: bool = True) -> Path:
    """Write `data` to `path` atomically with permission bits `mode`.

    `overwrite=False` refuses to replace an existing file (FileExistsError) — used for outputs,
    which are written once. The check-then-rename is race-free for a single writer, which is the
    daemon's case (one process, one file per job/index).

    `sync_dir=False` leaves the directory's fsync (which makes the rename durable) to the caller's
    last write into the same directory: one fsync of a directory covers every rename before it.
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
    if sync_dir:
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


def _ours(fd: int, path: Path, kind: str) -> None:
    st = os.fstat(fd)
    wanted = stat.S_ISDIR if kind == "directory" else stat.S_ISREG
    if not wanted(st.st_mode) or st.st_uid != os.geteuid() or (kind == "file" and st.st_nlink != 1):
        os.close(fd)
        raise UnsafePath(f"{path} is not a {kind} of {user_name(os.geteuid())}'s own (owner uid {st.st_uid}, "
                         f"{st.st_nlink} link(s)); another user may have planted it: remove it (rm {path}) "
                         "and start again")


def open_lock(path: Path) -> int:
    """A read-write descriptor on the lock file `path`, created 0600 if missing."""
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC, 0o600)
    except OSError as exc:
        if exc.errno in (errno.ELOOP, errno.EACCES) and path.is_symlink():  # EACCES: in a sticky directory
            raise UnsafePath(f"{path} is a symbolic link; another user may have planted it: remove it "
                             f"(rm {path}) and start again") from None
        raise
    _ours(fd, path, "file")
    return fd


def read_nofollow(path: Path) -> bytes:
    """The bytes of the file `path` itself: a symlink there is refused (UnsafePath), never read through."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise UnsafePath(f"{path} is a symbolic link; the daemon reads only the file itself: put the file "
                             "there (or restore the directory from backup)") from None
        raise
    with os.fdopen(fd, "rb") as handle:
        return handle.read()


class PrivateDir:
    """A fresh directory only this process can use, beside `target`; see the module's docstring.

    Use as a context manager: on an exception everything written is removed."""

    def __init__(self, target: Path) -> None:
        self.target = Path(os.path.abspath(target))
        self._parent = os.open(self.target.parent, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        self.name = f".{self.target.name}{TEMP_MARK}{secrets.token_hex(6)}"
        try:
            os.mkdir(self.name, 0o700, dir_fd=self._parent)
            self._fd = os.open(self.name, DIR_FLAGS, dir_fd=self._parent)
        except BaseException:
            os.close(self._parent)
            raise
        try:
            _ours(self._fd, self.target.parent / self.name, "directory")
        except UnsafePath:
            os.close(self._parent)
            raise
        self._dirs: dict[str, int] = {"": self._fd}

    @property
    def fd(self) -> int:
        """The directory's descriptor (valid inside the `with` block)."""
        return self._fd

    def _split(self, rel: str) -> tuple[int, str]:
        head, _, name = rel.rpartition("/")
        return self._dirs[head], name

    def mkdir(self, rel: str) -> None:
        """A subdirectory `rel` (its parent made first), 0700."""
        where, name = self._split(rel)
        os.mkdir(name, 0o700, dir_fd=where)
        self._dirs[rel] = os.open(name, DIR_FLAGS, dir_fd=where)

    def open(self, rel: str, mode: int = 0o600) -> BinaryIO:
        """A new file `rel` for writing (binary); the caller closes it."""
        where, name = self._split(rel)
        fd = os.open(name, NEW_FILE, mode, dir_fd=where)
        os.fchmod(fd, mode)
        return os.fdopen(fd, "wb")

    def write(self, rel: str, data: bytes, mode: int = 0o600) -> None:
        with self.open(rel, mode) as out:
            out.write(data)
            out.flush()
            os.fsync(out.fileno())

    def _sync(self) -> None:
        for fd in self._dirs.values():
            os.fsync(fd)

    def commit(self) -> Path:
        """Rename the directory onto `target` (absent, or an empty directory) and check it arrived."""
        self._sync()
        try:
            os.rename(self.name, self.target.name, src_dir_fd=self._parent, dst_dir_fd=self._parent)
        except OSError as exc:
            if exc.errno in (errno.ENOTEMPTY, errno.EEXIST, errno.ENOTDIR, errno.EISDIR):
                raise FileExistsError(f"{self.target} is not empty (or not a directory): export into a new or "
                                      "empty directory") from None
            raise
        self._arrived(os.fstat(self._fd), self.target)
        return self.target

    def move_out(self, rel: str) -> Path:
        """Rename the file `rel` onto `target` (replacing a file or symlink there, never following it)."""
        self._sync()
        where, name = self._split(rel)
        st = os.stat(name, dir_fd=where, follow_symlinks=False)
        os.rename(name, self.target.name, src_dir_fd=where, dst_dir_fd=self._parent)
        self._arrived(st, self.target)
        return self.target

    def _arrived(self, written: os.stat_result, path: Path) -> None:
        here = os.stat(path.name, dir_fd=self._parent, follow_symlinks=False)
        if (here.st_dev, here.st_ino) != (written.st_dev, written.st_ino):
            raise UnsafePath(f"{path} was replaced while it was written (another user can write "
                             f"{path.parent}); check it and write again somewhere only you can write")
        os.fsync(self._parent)

    def __enter__(self) -> PrivateDir:
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        ours = os.fstat(self._fd)
        for fd in self._dirs.values():
            os.close(fd)
        try:
            here = os.stat(self.name, dir_fd=self._parent, follow_symlinks=False)
            if (here.st_dev, here.st_ino) == (ours.st_dev, ours.st_ino):  # not someone else's put in its place
                shutil.rmtree(self.name, dir_fd=self._parent, ignore_errors=True)
        except FileNotFoundError:
            pass  # committed: the directory is the target now
        finally:
            os.close(self._parent)
