"""What the daemon does to its own process before it reads a secret.

- No core dumps: RLIMIT_CORE is set to 0 (soft and hard, so nothing running as the daemon's user
  can raise it again with prlimit) and the process is made non-dumpable (PR_SET_DUMPABLE 0).
  Non-dumpable also makes /proc/<pid>/{mem,environ,maps} root's alone and refuses ptrace (gdb,
  gcore) to processes of the same user; root keeps both. Workers inherit RLIMIT_CORE 0.
- Python children started by the standard library (the verify pool's "spawn") get
  PYTHONSAFEPATH=1 in `sai daemon`: the working directory never goes first on their `sys.path`.
  The worker is started isolated in every mode (daemon.worker.launch).
- Those pool processes exit when the daemon is gone, even killed without closing its pools
  (`exit_when_orphaned`): their task queue cannot tell them (each process holds both ends of its
  pipe), and `PR_SET_PDEATHSIG` follows the thread that started a process, not the daemon.

`/proc/<pid>/environ` keeps showing the environment the process was started with, whatever is
removed from `os.environ` later: see daemon.crypto.passphrase for why the passphrase should come
from a file or a systemd credential.
"""

from __future__ import annotations

import ctypes
import os
import resource
import threading
import time

PR_SET_DUMPABLE = 4
ORPHAN_CHECK_SECONDS = 0.5
"""How often a pool process checks that the daemon that started it is still its parent."""


def _prctl(option: int, value: int) -> None:
    if ctypes.CDLL(None, use_errno=True).prctl(option, value, 0, 0, 0) < 0:
        errno = ctypes.get_errno()
        raise OSError(errno, f"prctl({option}, {value}) failed: {os.strerror(errno)}")


def forbid_dumps() -> None:
    """No core dumps; no ptrace, /proc/<pid>/mem or /proc/<pid>/environ for other processes of this user."""
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    _prctl(PR_SET_DUMPABLE, 0)


def safe_python_children() -> None:
    """Python children the standard library starts (the deep-verify pool) never put the working
    directory on `sys.path`. Set by `sai daemon`, whose environment is its own; an embedded daemon
    leaves the console's environment alone (setting it there leaks into every process the console's
    host starts afterwards, a test runner's included)."""
    os.environ["PYTHONSAFEPATH"] = "1"


def exit_when_orphaned() -> None:
    """In a pool process (as its initializer): exit as soon as the process that started it is gone."""
    threading.Thread(target=_exit_when_orphaned, args=(os.getppid(),), name="orphan-check", daemon=True).start()


def _exit_when_orphaned(parent: int) -> None:
    while os.getppid() == parent:
        time.sleep(ORPHAN_CHECK_SECONDS)
    os._exit(0)
