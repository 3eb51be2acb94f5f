"""Checks of the host and the state dir that need neither torch nor a running daemon."""

from __future__ import annotations

import grp
import json
import os
import platform
import pwd
import shutil
import sqlite3
import stat
import sys
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import Any

from daemon import lockfile
from daemon.doctor import Check, fail, ok, warn
from daemon.ownership import UnsafePath, check_ancestors, check_state_dir, user_name

GIB = 1024 ** 3
SHOWN = 5
"""Problems named one by one in a detail; the rest are counted."""


def _unreadable(check: str, path: Path, exc: OSError) -> Check:
    return warn(check, f"cannot look at {path}: {exc.strerror}; not checked",
                "run sai doctor as the daemon's user (sudo -u USER sai doctor ...) or as root with --user USER")


def _absent(path: Path) -> bool:
    """True when `path` does not exist; OSError when it cannot be told (no permission on the way)."""
    try:
        os.lstat(path)
    except FileNotFoundError:
        return True
    return False


def listed(items: list[str]) -> str:
    """The first few `items`, comma-separated, and how many more."""
    more = f" and {len(items) - SHOWN} more" if len(items) > SHOWN else ""
    return ", ".join(items[:SHOWN]) + more


def python_version() -> Check:
    here = f"Python {platform.python_version()} ({sys.executable})"
    if sys.version_info[:2] == lockfile.PYTHON:
        return ok("python", here)
    want = ".".join(map(str, lockfile.PYTHON))
    return fail("python", f"{here}; the lock files are for Python {want}",
                f"install into a Python {want} venv: PYTHON=/usr/bin/python{want} ./install.sh from the bundle")


def packages(lock: Path | None) -> Check:
    """Every package the lock pins, installed at exactly its version; `lock` None: see lockfile.lock_candidates."""
    if lock is None:
        candidates = lockfile.lock_candidates()
        found = [p for p in candidates if p.is_file()]
        if not found:
            return warn("packages", f"no lock file found (looked at {', '.join(map(str, candidates))})",
                        "pass --lock FILE: the lock the installation was made from")
        lock = found[0]
    try:
        pinned = lockfile.pins(lock)
    except OSError as exc:
        return fail("packages", f"cannot read the lock {lock}: {exc.strerror}",
                    "pass --lock FILE naming a readable lock")
    wrong = []
    for name, version in sorted(pinned.items()):
        try:
            have = metadata.version(name)
        except metadata.PackageNotFoundError:
            have = "missing"
        if have != version:
            wrong.append(f"{name} {have} (lock: {version})")
    if not pinned:
        return fail("packages", f"{lock} pins no package",
                    "pass --lock FILE naming requirements.lock or requirements-cuda.lock")
    if wrong:
        return fail("packages", f"{len(wrong)} of {len(pinned)} packages differ from {lock}: {listed(wrong)}",
                    f"reinstall exactly the lock: {sys.executable} -m pip install --no-deps --require-hashes -r {lock} "
                    "(or run install.sh from the bundle again; `make setup` in a checkout)")
    return ok("packages", f"all {len(pinned)} packages match {lock}")


def nvml(wants_cuda: bool) -> tuple[Check, int]:
    """The NVML check and how many GPUs NVML sees."""
    from daemon.monitor.gpu import GpuProbe

    probe = GpuProbe()
    try:
        state = probe.read()
    finally:
        probe.close()
    if state["available"]:
        names = listed([f"{g['index']}: {g['name']}" for g in state["gpus"]])
        return ok("nvml", f"driver {state['driver']}, {len(state['gpus'])} GPU(s): {names}"), len(state["gpus"])
    detail = f"NVML unavailable: {state['reason']}; the console shows no GPU figures"
    fix = "install the NVIDIA driver until `nvidia-smi` lists the GPUs (in a container: the NVIDIA runtime)"
    if wants_cuda:
        return fail("nvml", f"{detail}, and model.device = \"cuda\"", fix), 0
    return warn("nvml", detail, f"nothing to do on a CPU-only server; otherwise {fix}"), 0


def _existing(path: Path) -> Path:
    while not os.path.exists(path) and path != path.parent:
        path = path.parent
    return path


def disk(places: dict[str, Path], alerts: Any) -> list[Check]:
    """Free space on each file system holding one of `places` ({what: path}), against the monitor's alert levels."""
    critical = max(alerts.disk_free_critical_gib, alerts.disk_refuse_below_gib)
    warning = alerts.disk_free_warning_gib
    by_device: dict[int, list[tuple[str, Path]]] = {}
    for what, path in places.items():
        by_device.setdefault(_existing(path).stat().st_dev, []).append((what, path))
    checks = []
    for named in by_device.values():
        label = "disk: " + ", ".join(what for what, _ in named)
        where = _existing(named[0][1])
        usage = shutil.disk_usage(where)
        free = f"{usage.free / GIB:.2f} GiB free of {usage.total / GIB:.2f} GiB under {named[0][1]}"
        fix = (f"free space on the file system of {where} (export and remove old outputs after `sai backup`), "
               "or move the state dir to a larger disk")
        if critical and usage.free < critical * GIB:
            checks.append(fail(label, f"{free}: below {critical:g} GiB (alerts.disk_free_critical_gib, "
                                      "disk_refuse_below_gib: new jobs are refused)", fix))
        elif warning and usage.free < warning * GIB:
            checks.append(warn(label, f"{free}: below alerts.disk_free_warning_gib = {warning:g} GiB", fix))
        else:
            checks.append(ok(label, free))
    return checks


def key_modes(keys_dir: Path, uid: int) -> Check:
    """keys/ and its directories 0700, every file in it 0600, all owned by the daemon's user."""
    try:
        if _absent(keys_dir):
            return ok("key files", f"no {keys_dir} yet: the daemon creates the keys on first start")
        tree = list(os.walk(keys_dir, onerror=_raise))
    except OSError as exc:
        return _unreadable("key files", keys_dir, exc)
    wrong: list[str] = []
    fixes: list[str] = []
    for root, dirs, files in tree:
        for name in [".", *dirs, *files]:
            path = Path(root) / name if name != "." else Path(root)
            st = os.lstat(path)
            if stat.S_ISLNK(st.st_mode):
                wrong.append(f"{path} is a symbolic link")
                fixes.append(f"rm {path} and restore the key it should be from a backup")
                continue
            want = 0o700 if stat.S_ISDIR(st.st_mode) else 0o600
            mode = stat.S_IMODE(st.st_mode)
            if mode & 0o077:
                wrong.append(f"{path} is mode {mode:04o}, open to other users")
                fixes.append(f"chmod {want:o} {path}")
            if st.st_uid != uid:
                wrong.append(f"{path} belongs to {user_name(st.st_uid)}, not {user_name(uid)}")
                fixes.append(f"chown {user_name(uid)} {path} (if the daemon runs as {user_name(st.st_uid)}: "
                             f"sai doctor --user {user_name(st.st_uid)})")
    if wrong:
        return fail("key files", listed(wrong) + "; anyone who can read a key can decrypt outputs or forge signatures",
                    "; ".join(dict.fromkeys(fixes)))
    return ok("key files", f"{keys_dir}: directories 0700, files 0600, owned by {user_name(uid)}")


def _raise(exc: OSError) -> None:
    raise exc


def state_ownership(state_dir: Path, uid: int) -> Check:
    """What the daemon checks at start (daemon.ownership), told before it refuses to start."""
    try:
        if _absent(state_dir):
            return ok("state dir", f"{state_dir} does not exist yet: the daemon creates it on first start")
        check_ancestors(state_dir, uid, "state directory")
        check_state_dir(state_dir, uid)
    except UnsafePath as exc:
        text = str(exc)
        _, _, fix = text.partition("run: ")
        owner = user_name(os.lstat(state_dir).st_uid)
        other = f" (if the daemon runs as {owner}: sai doctor --user {owner})" if owner != user_name(uid) else ""
        return fail("state dir", text, (fix or f"give {state_dir} to {user_name(uid)} alone") + other)
    except OSError as exc:
        return _unreadable("state dir", state_dir, exc)
    return ok("state dir", f"{state_dir}, its keys and databases belong to {user_name(uid)}")


def socket_group(name: str, uid: int, source: str) -> Check:
    if not name:
        return ok("socket group", "daemon.socket_group not set: the socket belongs to the daemon's own group")
    try:
        group = grp.getgrnam(name)
    except KeyError:
        return fail("socket group", f"daemon.socket_group = {name!r}: no such group; the daemon cannot start",
                    f"groupadd --system {name} && usermod -aG {name} OPERATOR, or set daemon.socket_group in {source}")
    user = user_name(uid)
    try:
        primary = pwd.getpwuid(uid).pw_gid
    except KeyError:
        primary = -1
    if uid != 0 and group.gr_gid != primary and user not in group.gr_mem:
        return fail("socket group", f"{user} is not in group {name}, so the daemon cannot give the socket to it",
                    f"usermod -aG {name} {user}")
    members = ", ".join(group.gr_mem) or "no other members"
    return ok("socket group", f"{name} (gid {group.gr_gid}; {members})")


def _rfc3339(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


def clock(audit_db: Path) -> Check:
    """The clock is not behind the newest audit entry (read-only; the daemon may be running)."""
    try:
        if _absent(audit_db):
            return ok("clock", f"no audit log yet ({audit_db})")
    except OSError as exc:
        return _unreadable("clock", audit_db, exc)
    # Never create a file in the state dir (run as root, it would belong to root): with no WAL beside
    # the log no daemon is writing it, and it is read as immutable, which opens nothing else.
    wal = all(Path(f"{audit_db}{suffix}").exists() for suffix in ("-wal", "-shm"))
    try:
        conn = sqlite3.connect(f"{audit_db.resolve().as_uri()}?mode=ro{'' if wal else '&immutable=1'}",
                               uri=True, timeout=5.0)
        try:
            row = conn.execute("SELECT seq, entry FROM audit_entries ORDER BY seq DESC LIMIT 1").fetchone()
        finally:
            conn.close()
    except sqlite3.Error as exc:
        return fail("clock", f"cannot read {audit_db}: {exc}",
                    f"check {audit_db} with `sai audit verify`; restore it from a backup if it is damaged")
    now = datetime.now(UTC)
    if row is None:
        return ok("clock", f"{now:%Y-%m-%dT%H:%M:%SZ}; the audit log is empty")
    seq, last = row[0], json.loads(row[1])["time"]
    if now < _rfc3339(last):
        return fail("clock", f"the clock reads {now.isoformat(timespec='seconds')}, earlier than audit entry {seq} "
                             f"({last}): new entries would go back in time",
                    "set the clock right (timedatectl set-ntp true, or chronyc makestep) before starting the daemon")
    return ok("clock", f"{now.isoformat(timespec='seconds')}, after the last audit entry {seq} ({last})")
