"""Who owns the paths the daemon trusts, checked before it trusts them.

Whoever can write a directory can rename what is in it and put something of their own in its
place; whoever owns a file can read and change it whatever its mode. So the daemon refuses to
start when:

- a directory above its state dir or socket, or a symlink on the way there, belongs to someone
  other than root or the daemon's user, or is writable by group or others without the sticky bit
  (a sticky, root-owned directory such as /tmp is fine: others cannot rename what is not theirs);
- the state dir, `keys/`, or anything directly in them (databases, WAL files, keys) belongs to
  another user; entries are checked with lstat, so a planted symlink is caught by its owner.

Each refusal names the path and the command that fixes it.
"""

from __future__ import annotations

import os
import pwd
import stat
from pathlib import Path

SHARED_BITS = stat.S_IWGRP | stat.S_IWOTH


class UnsafePath(PermissionError):
    """A path the daemon would trust can be changed by another user (the message says which and what to do)."""


def user_name(uid: int) -> str:
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return f"uid {uid}"


def _owner(uid: int) -> str:
    return f"{user_name(uid)} (uid {uid})"


def _chain(path: Path) -> list[Path]:
    """Every existing directory and symlink from / down to `path`'s parent, as written and as resolved."""
    seen: dict[Path, None] = {}
    for start in (Path(os.path.abspath(path)), Path(os.path.realpath(path))):
        for ancestor in reversed(start.parents):
            seen.setdefault(ancestor, None)
    return [p for p in seen if os.path.lexists(p)]


def check_ancestors(path: Path, uid: int, what: str) -> None:
    """Refuse when a directory above `path`, or a symlink on the way, lets another user replace it."""
    for ancestor in _chain(path):
        st = os.lstat(ancestor)
        if st.st_uid not in (0, uid):
            raise UnsafePath(
                f"{what} {path}: {ancestor} belongs to {_owner(st.st_uid)}, who could replace what is below it; "
                f"run: chown root {ancestor} (or put the {what} somewhere only root or {user_name(uid)} owns)")
        if stat.S_ISDIR(st.st_mode) and st.st_mode & SHARED_BITS and not st.st_mode & stat.S_ISVTX:
            raise UnsafePath(
                f"{what} {path}: {ancestor} is writable by other users (mode {st.st_mode & 0o7777:04o}), who "
                f"could rename what is in it and put their own in its place; run: chmod go-w {ancestor} "
                f"(or chmod +t {ancestor} for a shared directory like /tmp)")


def check_shared_dir(directory: Path, uid: int, what: str) -> None:
    """A directory other users may not write in, unless it is sticky and belongs to root or `uid`."""
    st = os.lstat(directory)
    if stat.S_ISLNK(st.st_mode):
        raise UnsafePath(f"{what} {directory} is a symbolic link; use the directory it points to")
    if st.st_uid not in (0, uid):
        raise UnsafePath(f"{what} {directory} belongs to {_owner(st.st_uid)}, not to {user_name(uid)} or root; "
                         f"run: chown {user_name(uid)} {directory}")
    if st.st_mode & SHARED_BITS and not st.st_mode & stat.S_ISVTX:
        raise UnsafePath(
            f"{what} {directory} is writable by other users (mode {st.st_mode & 0o7777:04o}), who could swap "
            f"what the daemon creates there for a symlink; run: chmod go-w {directory} "
            f"(or chmod +t {directory} if it must stay shared)")


def check_owned(directory: Path, uid: int, what: str) -> None:
    """`directory` and everything directly in it belong to `uid` (symlinks judged by their own owner)."""
    entries = [directory, *(Path(e.path) for e in os.scandir(directory))]
    for path in entries:
        owner = os.lstat(path).st_uid
        if owner != uid:
            raise UnsafePath(
                f"{path} belongs to {_owner(owner)}, not to the daemon's user {_owner(uid)}: whoever owns a file "
                f"in the {what} can read or replace keys and databases. If nobody tampered with it, run: "
                f"chown -R {user_name(uid)} {directory}; otherwise move {directory} aside and start afresh")


def check_state_dir(state_dir: Path, uid: int) -> None:
    """The state dir, `keys/` and `keys/kek/`, and what is directly in each, belong to `uid`."""
    check_owned(state_dir, uid, "state directory")
    for sub in ("keys", "keys/kek"):
        if (state_dir / sub).is_dir() and not (state_dir / sub).is_symlink():
            check_owned(state_dir / sub, uid, "key store")
