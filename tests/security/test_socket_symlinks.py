"""Issue 19 item 9: symlinks planted beside the socket never redirect the daemon's writes.

Before the fix the daemon opened `<socket>.lock` with O_CREAT and no O_NOFOLLOW, then truncated it
and wrote its pid: a symlink planted there by another user truncated a root file. And it bound
the socket by name, then chmod/chown'ed that name: a user who could write the socket's directory
swapped the fresh socket for a symlink in between, and a root 0600 file became 0660 to the
socket's group. Now the lock is opened with O_NOFOLLOW (a symlink refuses the start, naming it),
the socket is bound and chmod'ed in a private directory and renamed into place, and a socket
directory others can write (not sticky) is refused.
"""

from __future__ import annotations

import grp
import subprocess
import sys
from pathlib import Path

from daemon.exitcodes import ExitCode
from tests.harness import DaemonProcess
from tests.security.attack_helpers import run_as, shared_config
from tests.security.path_attacks import Background, refused, scratch  # noqa: F401  (a fixture)

SYMLINK = r'''
import json, os, sys
os.symlink(sys.argv[2], sys.argv[1])
print(json.dumps(os.readlink(sys.argv[1])))
'''

SWAP = r'''
import json, os, stat, sys, time
path, target, daemon_pid = sys.argv[1], sys.argv[2], sys.argv[3]
def running():
    try:
        with open(f"/proc/{daemon_pid}/stat") as stat_file:
            return stat_file.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False
deadline = time.monotonic() + 120
while time.monotonic() < deadline and running():
    try:
        if stat.S_ISSOCK(os.lstat(path).st_mode):
            os.rename(path, path + ".moved")
            os.symlink(target, path)
            print(json.dumps("swapped"))
            break
    except OSError:
        pass
    time.sleep(0.0005)
else:
    print(json.dumps("no socket appeared"))
'''
"""The attacker's loop: the moment a socket appears at `path`, swap it for a symlink to `target`
(while the daemon runs)."""


def with_socket_in(daemon: DaemonProcess, directory: Path) -> DaemonProcess:
    daemon.socket = directory / daemon.socket.name
    return daemon


def test_a_lock_symlink_planted_in_a_shared_socket_directory_truncates_nothing(
        make_daemon, local_users, scratch) -> None:
    sticky = scratch.dir(0o1777)  # like /tmp: anyone may create, nobody may rename what is not theirs
    precious = scratch.precious()
    daemon = with_socket_in(make_daemon(start=False), sticky)
    lock = f"{daemon.socket}.lock"
    assert run_as(local_users["other"], SYMLINK, lock, str(precious)) == str(precious)
    try:
        log = refused(daemon)
    finally:
        assert precious.read_text() == "root's own data\n", "the daemon truncated the file the symlink named"
    assert f"{lock} is a symbolic link" in log and f"rm {lock}" in log


def test_a_socket_swapped_for_a_symlink_after_bind_opens_nothing(make_daemon, local_users, scratch) -> None:
    """strace slows every chmod by half a second, so the attacker's swap always lands between bind
    and chmod, where it landed by luck in the review."""
    writable = scratch.dir(0o777)
    precious = scratch.precious()
    daemon = with_socket_in(make_daemon(shared_config(local_users), start=False), writable)
    slow_chmod = ["strace", "-f", "-qq", "-o", "/dev/null", "-e", "trace=chmod,fchmodat",
                  "-e", "inject=chmod,fchmodat:delay_enter=500000", sys.executable, "-m", "console.cli"]
    daemon.start(wait=False, program=slow_chmod)
    assert daemon.proc is not None
    outcome = Background(local_users["other"], SWAP, str(daemon.socket), str(precious), str(daemon.proc.pid)).result()
    try:
        exit_code: int | None = daemon.proc.wait(30)
    except subprocess.TimeoutExpired:
        exit_code = None  # serving
    mode, group = precious.stat().st_mode & 0o777, precious.stat().st_gid
    assert (mode, group) == (0o600, 0), f"{outcome}: {precious} became {mode:o} group {grp.getgrgid(group).gr_name}"
    assert exit_code == ExitCode.NOT_STARTED
    log = daemon.read_log()
    assert f"socket directory {writable} is writable by other users" in log and f"chmod go-w {writable}" in log
