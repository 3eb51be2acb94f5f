"""Helpers of the path attacks (issue 19 items 2, 7, 8, 9, 11): directories shared with other
users, a root file for the attacks to aim at, an attacker running in the background while the
test goes on, and a daemon started the way an administrator starts it (the installed `sai`).
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from daemon.exitcodes import ExitCode
from tests.harness import DaemonProcess
from tests.security.attack_helpers import LocalUser

SAI = str(Path(sys.executable).with_name("sai"))
"""The installed console script, as systemd's ExecStart= or an administrator runs it."""
ATTACKER_ENV = {"PATH": "/usr/bin:/bin", "HOME": "/tmp", "LANG": "C.UTF-8"}


class Scratch:
    """Directories under /tmp made by root for one test, removed after it."""

    def __init__(self) -> None:
        self.made: list[Path] = []

    def dir(self, mode: int = 0o700) -> Path:
        path = Path(tempfile.mkdtemp(prefix="sai-sec-", dir="/tmp"))  # short: socket paths
        path.chmod(mode)
        self.made.append(path)
        return path

    def precious(self, text: str = "root's own data\n") -> Path:
        """A root file (0600, in a directory only root can enter): what the attacks aim at."""
        path = self.dir() / "precious"
        path.write_text(text)
        path.chmod(0o600)
        return path

    def remove(self) -> None:
        for path in self.made:
            shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def scratch() -> Iterator[Scratch]:
    made = Scratch()
    yield made
    made.remove()


class Background:
    """Python code running as `user` while the test goes on; `result` waits for the JSON it prints last."""

    def __init__(self, user: LocalUser, code: str, *args: str) -> None:
        self.proc = subprocess.Popen(user.command([sys.executable, "-c", code, *args]), env=ATTACKER_ENV,
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)

    def result(self, timeout: float = 120.0) -> Any:
        out, err = self.proc.communicate(timeout=timeout)
        assert self.proc.returncode == 0, f"the attacker's script failed:\n{err[-3000:]}"
        return json.loads(out.strip().splitlines()[-1])


def refused(daemon: DaemonProcess, **start: Any) -> str:
    """Start `daemon`, which must refuse (ExitCode.NOT_STARTED) instead of serving; its log."""
    with pytest.raises(RuntimeError, match=f"daemon exited with {ExitCode.NOT_STARTED:d}"):
        daemon.start(timeout=120, **start)
    return daemon.read_log()
