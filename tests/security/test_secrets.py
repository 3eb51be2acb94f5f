"""Issue 19 item 7: the passphrase and the keys it unseals stay inside the daemon.

The daemon runs as a real unprivileged service account (like `sai` in the shipped unit) with
sealed keys and `SAI_PASSPHRASE` in its environment. Whatever else runs as that account (the
worker, a compromised one above all) attacks it: reads the worker's and the daemon's
`/proc/<pid>/environ`, scans the daemon's memory through `/proc/<pid>/mem`, raises its core limit
with prlimit and crashes it for a core dump. Before the fix every one of those gave the
passphrase. Now the daemon takes `SAI_PASSPHRASE` out of its environment before any child
starts, builds the worker's environment from an allow-list, and makes itself non-dumpable with
RLIMIT_CORE 0 (soft and hard) before it reads a key.
"""

from __future__ import annotations

import secrets
import subprocess
import time
from pathlib import Path

import pytest

from tests.harness import DaemonProcess
from tests.security.attack_helpers import LocalUser, run_as
from tests.security.path_attacks import SAI, refused, scratch  # noqa: F401  (a fixture)

SEALED = {"keys": {"sealed": True, "scrypt_log2_n": 15}}

PEEK = r'''
import json, sys
pid, secret = sys.argv[1], sys.argv[2].encode()
found = {}
try:
    with open(f"/proc/{pid}/environ", "rb") as environ:
        found["environ"] = secret in environ.read()
except OSError as exc:
    found["environ"] = exc.strerror
try:
    hit = False
    with open(f"/proc/{pid}/maps") as maps, open(f"/proc/{pid}/mem", "rb", 0) as mem:
        for line in maps:
            span, perms = line.split()[:2]
            lo, hi = (int(x, 16) for x in span.split("-"))
            if "r" in perms and hi - lo <= 256 << 20 and not hit:
                try:
                    mem.seek(lo)
                    hit = secret in mem.read(hi - lo)
                except (OSError, ValueError, OverflowError):
                    pass
    found["memory"] = hit
except OSError as exc:
    found["memory"] = exc.strerror
print(json.dumps(found))
'''
"""What a process of the daemon's own user learns of `secret` from /proc/<pid>: True, False, or why not."""

CRASH = r'''
import json, os, signal, subprocess, sys
pid = sys.argv[1]
raised = subprocess.run(["prlimit", f"--pid={pid}", "--core=unlimited:unlimited"], capture_output=True, text=True)
os.kill(int(pid), signal.SIGSEGV)
print(json.dumps(raised.returncode == 0 or raised.stderr.strip()))
'''
"""Raise the daemon's core limit (prlimit, allowed to the same user below the hard limit) and crash it."""


def as_service(make_daemon, account: LocalUser, passphrase: str) -> DaemonProcess:
    """A daemon with sealed keys running as `account`, $SAI_PASSPHRASE in its start environment.

    No worker: on this host the interpreter lives under /root (0700), so a process of another
    user cannot start one; the worker's side is checked with a root daemon below."""
    daemon = make_daemon({**SEALED, "model": {"preload": False}}, start=False)
    root = daemon.socket.parent
    (daemon.state_dir / "models" / "tiny").unlink()  # a link into root's private temp dir
    subprocess.run(["chown", "-R", f"{account.uid}:{account.gid}", str(root)], check=True)
    return daemon.start(env={"SAI_PASSPHRASE": passphrase, "HOME": str(root)}, program=account.command([SAI]), cwd=root)


def test_processes_of_the_daemons_own_user_get_no_passphrase(make_daemon, local_users) -> None:
    account, passphrase = local_users["other"], "sealed " + secrets.token_hex(12)
    daemon = as_service(make_daemon, account, passphrase)
    assert daemon.proc is not None
    peek = run_as(account, PEEK, str(daemon.proc.pid), passphrase)
    assert peek == {"environ": "Permission denied", "memory": "Permission denied"}, peek
    limits = Path(f"/proc/{daemon.proc.pid}/limits").read_text()
    assert [line.split()[4:6] for line in limits.splitlines() if line.startswith("Max core file size")] == [["0", "0"]]

    raised = run_as(account, CRASH, str(daemon.proc.pid))
    daemon.proc.wait(60)
    time.sleep(0.5)
    cores = [p for p in daemon.socket.parent.iterdir() if p.name.startswith("core")]
    leaked = [p.name for p in cores if passphrase.encode() in p.read_bytes()]
    assert not cores, f"prlimit: {raised}; a core dump was written ({[p.name for p in cores]}), holding the passphrase: {leaked}"


async def test_the_worker_never_inherits_the_passphrase(make_daemon, client_of, wait_for) -> None:
    passphrase = "sealed " + secrets.token_hex(12)
    daemon = make_daemon(SEALED, start=False).start(env={"SAI_PASSPHRASE": passphrase, "PYTHONINSPECT": "1"})
    client = await client_of(daemon)
    assert (await wait_for(client, (await client.call("job.submit", prompt="x"))["job_id"]))["state"] == "succeeded"
    [worker] = daemon.worker_pids()
    environ = dict(item.split(b"=", 1) for item in Path(f"/proc/{worker}/environ").read_bytes().split(b"\0") if item)
    assert passphrase.encode() not in b"".join(environ.values()), "the worker inherited the passphrase"
    inherited = [name for name in environ if name.startswith((b"SAI_", b"PYTHON")) and name != b"SAI_WORKER_NAME"]
    assert not inherited, sorted(environ)
    assert environ[b"SAI_WORKER_NAME"] == b"cpu0"  # set by the daemon, not inherited: the worker's name only


def test_a_passphrase_file_others_can_read_is_refused(make_daemon, scratch) -> None:
    secret_file = scratch.dir(0o755) / "passphrase"
    secret_file.write_text("correct horse battery\n")
    secret_file.chmod(0o644)
    daemon = make_daemon(SEALED, start=False)
    log = refused(daemon, env={"SAI_PASSPHRASE_FILE": str(secret_file)})
    assert f"passphrase file {secret_file}" in log and f"chmod 600 {secret_file}" in log
    secret_file.chmod(0o600)
    daemon.start(env={"SAI_PASSPHRASE_FILE": str(secret_file)})
    assert daemon.terminate() == 0


@pytest.mark.parametrize("source", ["credential", "file"])
def test_the_passphrase_comes_from_a_systemd_credential_or_a_file(make_daemon, scratch, source: str) -> None:
    where = scratch.dir(0o700)
    (where / "sai-passphrase").write_text("correct horse battery\n")
    (where / "sai-passphrase").chmod(0o400)
    env = ({"CREDENTIALS_DIRECTORY": str(where)} if source == "credential"
           else {"SAI_PASSPHRASE_FILE": str(where / "sai-passphrase")})
    daemon = make_daemon(SEALED, start=False).start(env=env)
    assert daemon.terminate() == 0
    again = make_daemon(SEALED, start=False, state_from=daemon)
    wrong = where / "wrong"
    wrong.write_text("wrong horse\n")
    wrong.chmod(0o600)
    assert "wrong passphrase" in refused(again, env={"SAI_PASSPHRASE_FILE": str(wrong)})
