"""Real other local users for the attack tests.

The attacks of the security suite run as real users (created with `useradd` when the suite runs
as root) through `setpriv`, never by faking a peer's uid. Without root the tests that need them
skip with a reason that says so.
"""

from __future__ import annotations

import grp
import os
import pwd
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import pytest

SOCKET_GROUP = "saitest-sock"
USERS = {
    "viewer": "saitest-viewer",      # in the socket's group, no rule names it: a viewer
    "operator": "saitest-op",        # in the socket's group and named an operator in the config
    "other": "saitest-other",        # a local user outside the socket's group
}


@dataclass(frozen=True)
class LocalUser:
    name: str
    uid: int
    gid: int

    def run(self, argv: Sequence[str], *, cwd: str | Path = "/", timeout: float = 60.0,
            env: dict[str, str] | None = None, check: bool = False) -> subprocess.CompletedProcess[str]:
        """Run `argv` as this user (real uid, gid and supplementary groups) with `setpriv`."""
        cmd = self.command(argv)
        base = {"PATH": "/usr/bin:/bin", "HOME": "/tmp", "LANG": "C.UTF-8"}
        return subprocess.run(cmd, cwd=cwd, env={**base, **(env or {})}, capture_output=True,
                              text=True, timeout=timeout, check=check)

    def command(self, argv: Sequence[str]) -> list[str]:
        """`argv` behind `setpriv` as this user, for a process the test starts itself (Popen, a daemon)."""
        return ["setpriv", f"--reuid={self.uid}", f"--regid={self.gid}", "--init-groups", "--", *argv]

    def python(self, code: str, *args: str, **kwargs: object) -> subprocess.CompletedProcess[str]:
        """Run Python code as this user with the project's interpreter (isolated from the cwd)."""
        return self.run([sys.executable, "-c", code, *args], **kwargs)  # type: ignore[arg-type]


def _ensure_group(name: str) -> int:
    try:
        return grp.getgrnam(name).gr_gid
    except KeyError:
        subprocess.run(["groupadd", "--system", name], check=True)
        return grp.getgrnam(name).gr_gid


def _ensure_user(name: str, groups: list[str]) -> LocalUser:
    try:
        entry = pwd.getpwnam(name)
    except KeyError:
        cmd = ["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin", name]
        if groups:
            cmd[1:1] = ["--groups", ",".join(groups)]
        subprocess.run(cmd, check=True)
        entry = pwd.getpwnam(name)
    for group in groups:
        if name not in grp.getgrnam(group).gr_mem:
            subprocess.run(["usermod", "--append", "--groups", group, name], check=True)
    return LocalUser(name, entry.pw_uid, entry.pw_gid)


@pytest.fixture(scope="session")
def local_users() -> dict[str, LocalUser]:
    """`{"viewer": …, "operator": …, "other": …}`: real accounts, created once (needs root)."""
    if os.geteuid() != 0:
        pytest.skip("the attack tests need root to create real local users (useradd) and to run as them (setpriv)")
    _ensure_group(SOCKET_GROUP)
    return {
        "viewer": _ensure_user(USERS["viewer"], [SOCKET_GROUP]),
        "operator": _ensure_user(USERS["operator"], [SOCKET_GROUP]),
        "other": _ensure_user(USERS["other"], []),
    }


def shared_config(users: dict[str, LocalUser]) -> dict[str, dict[str, object]]:
    """Config overrides that open the socket to the test users' group and name the operator."""
    return {"daemon": {"socket_group": SOCKET_GROUP},
            "auth": {"operator_users": [users["operator"].name], "unknown": "viewer"}}


def open_path_to_others(path: Path) -> None:
    """Let other users traverse down to `path` (temp dirs are 0700): o+x on it and its parents under /tmp."""
    for part in [path, *path.parents]:
        if part == Path("/tmp") or part == Path("/"):
            break
        part.chmod(part.stat().st_mode | 0o011)
