"""One user is one person fleet-wide, by login name: the same operator has another uid on another
machine (two boxes' /etc/passwd disagree, as they do without a shared directory's fixed uids), and
still owns on box-b the job they submitted through box-a: their client_token finds it, they see its
prompt and may cancel it. Real users (useradd) and real uids (setpriv); box-b runs in a mount
namespace whose /etc/passwd gives the operator's name another uid, like a second machine."""

from __future__ import annotations

import grp
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

from tests.conftest import DaemonFactory
from tests.fleet.conftest import member_config
from tests.harness import merged
from tests.security.attack_helpers import CLIENT, run_as
from tests.security.conftest import SOCKET_GROUP, LocalUser, local_users, open_path_to_others, shared_config

__all__ = ["local_users"]  # a fixture

OTHER_MACHINE = ["unshare", "--mount", "sh", "-c", 'mount --bind "$SAI_TEST_PASSWD" /etc/passwd && exec "$@"', "sh",
                 sys.executable, "-m", "console.cli"]
"""`sai daemon` seeing the test's passwd file as /etc/passwd (its own mount namespace)."""

CALLS = r'''
import sys
path, calls = sys.argv[1], json.loads(sys.argv[2])
print(json.dumps([rpc(path, method, **params) for method, params in calls]))
'''


def _passwd_giving(user: LocalUser, uid: int, into: Path) -> Path:
    lines = []
    for line in Path("/etc/passwd").read_text().splitlines():
        fields = line.split(":")
        if fields[0] == user.name:
            fields[2] = str(uid)
        lines.append(":".join(fields))
    into.write_text("\n".join(lines) + "\n")
    into.chmod(0o644)
    return into


def _calls_as_uid(uid: int, gid: int, socket: Path, calls: list[tuple[str, dict[str, Any]]]) -> list[Any]:
    """The replies to `calls` made by a process of `uid` (no passwd entry on this host needed)."""
    done = subprocess.run(["setpriv", f"--reuid={uid}", f"--regid={gid}", "--clear-groups", "--",
                           sys.executable, "-c", CLIENT + CALLS, str(socket), json.dumps(calls)],
                          cwd="/", env={"PATH": "/usr/bin:/bin", "HOME": "/tmp", "LANG": "C.UTF-8"},
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr[-3000:]
    replies: list[Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return replies


def test_an_operator_owns_their_job_on_every_box_whatever_their_uid_there(
        make_daemon: DaemonFactory, fleet_url: str, prompt_key_file: str, local_users: dict[str, LocalUser],
        tmp_path: Path) -> None:
    operator = local_users["operator"]
    uid_on_b = operator.uid + 4321
    paused = {"queue": {"start_paused": True}}
    a = make_daemon(merged(member_config(fleet_url, "box-a", prompt_key_file), shared_config(local_users), paused))
    b = make_daemon(merged(member_config(fleet_url, "box-b", prompt_key_file), shared_config(local_users), paused),
                    start=False)
    tmp_path.chmod(0o755)
    b.start(program=OTHER_MACHINE, env={"SAI_TEST_PASSWD": str(_passwd_giving(operator, uid_on_b,
                                                                              tmp_path / "passwd"))})
    for daemon in (a, b):
        open_path_to_others(daemon.socket.parent)

    submitted = run_as(operator, CALLS, str(a.socket),
                       json.dumps([["job.submit", {"prompt": "a lighthouse", "client_token": "tok-1"}]]))[0]
    job_id = submitted["result"]["job_id"]

    group = grp.getgrnam(SOCKET_GROUP).gr_gid
    status, again, seen, cancelled = _calls_as_uid(uid_on_b, group, b.socket, [
        ("daemon.status", {}),
        ("job.submit", {"prompt": "a lighthouse", "client_token": "tok-1"}),
        ("job.get", {"job_id": job_id}),
        ("job.cancel", {"job_id": job_id}),
    ])
    you = status["result"]["you"]
    assert (you["user"], you["uid"], you["role"]) == (operator.name, uid_on_b, "operator"), you
    assert again["result"]["job_id"] == job_id and again["result"]["duplicate"] is True, again
    assert seen["result"]["params"]["prompt"] == "a lighthouse", seen
    assert seen["result"]["uid"] == operator.uid  # submitted on box-a, under the uid it has there
    assert cancelled["result"]["state"] == "cancelled", cancelled
