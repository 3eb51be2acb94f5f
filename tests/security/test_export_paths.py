"""Issue 19 item 11: exports never write through what another user planted.

`audit.export` used to write into its target directory by name: a user who made that directory
(empty, theirs, in a shared place like /tmp) planted a symlink in it while the export ran, and
the root daemon wrote the manifest through it over a root file. `sai export -o` wrote through
`.<name>.part` opened without O_EXCL: a user who made that file first (world-readable, theirs)
kept a plaintext copy of the image. Both now write into a fresh private directory beside the
target, by descriptor with O_EXCL|O_NOFOLLOW, and rename the result into place.
"""

from __future__ import annotations

import json

from tests.security.attack_helpers import fill_audit, run_as, shared_daemon
from tests.security.path_attacks import SAI, Background, scratch  # noqa: F401  (a fixture)

PLANT_DURING_EXPORT = r'''
import json, os, sys, time
target, victim = sys.argv[1], sys.argv[2]
os.mkdir(target, 0o777)
os.chmod(target, 0o777)
print(json.dumps("ready"), flush=True)
deadline = time.monotonic() + 60
while time.monotonic() < deadline:
    try:
        if os.stat(target).st_uid != os.getuid():
            print(json.dumps("the export replaced the directory"))
            break
        if {"checkpoints", "keys", "entries.jsonl"} & set(os.listdir(target)):
            os.symlink(victim, os.path.join(target, "manifest.json"))
            print(json.dumps("planted"))
            break
    except OSError:
        pass
else:
    print(json.dumps("nothing to plant into"))
'''
"""The attacker makes the (empty) export directory, then plants `manifest.json` -> the victim the
moment the export starts filling it."""


async def test_a_symlink_planted_during_an_audit_export_overwrites_nothing(
        make_daemon, local_users, scratch, client_of) -> None:
    shared = scratch.dir(0o1777)
    precious = scratch.precious()
    daemon = make_daemon({"queue": {"rate_per_minute": 1e6, "burst": 100000, "max_queued_per_user": 100000},
                          "model": {"preload": False}})
    admin = await client_of(daemon)
    await fill_audit(admin, 2000)  # an export that takes a moment, like a real one
    target = shared / "audit-export"
    attacker = Background(local_users["other"], PLANT_DURING_EXPORT, str(target), str(precious))
    assert attacker.proc.stdout is not None and json.loads(attacker.proc.stdout.readline()) == "ready"
    try:
        reply = await admin.call("audit.export", directory=str(target))
    finally:
        outcome = attacker.result()
    assert precious.read_text() == "root's own data\n", f"{outcome}: the export wrote through the planted symlink"
    manifest = target / "manifest.json"
    assert not manifest.is_symlink() and json.loads(manifest.read_text())["entries"] == reply["entries"]
    assert target.stat().st_uid == 0 and target.stat().st_mode & 0o777 == 0o700


SUBMIT = r'''
import json, sys, time
path = sys.argv[1]
job_id = rpc(path, "job.submit", prompt="an operator's private image")["result"]["job_id"]
while (job := rpc(path, "job.get", job_id=job_id)["result"])["state"] not in ("succeeded", "failed", "cancelled"):
    time.sleep(0.1)
print(json.dumps(job))
'''

PRE_CREATE_PART = r'''
import json, os, sys
fd = os.open(sys.argv[1], os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
os.fchmod(fd, 0o666)
os.close(fd)
print(json.dumps(oct(os.stat(sys.argv[1]).st_mode)))
'''

STEAL = r'''
import json, os, sys
stolen = {}
for name in os.listdir(sys.argv[1]):
    try:
        with open(os.path.join(sys.argv[1], name), "rb") as f:
            stolen[name] = f.read(8).hex()
    except OSError:
        pass
print(json.dumps(stolen))
'''
"""What the attacker can read in the shared directory afterwards: each file's first bytes."""
PNG = b"\x89PNG\r\n\x1a\n".hex()


async def test_a_part_file_planted_beside_a_cli_export_gets_no_copy(make_daemon, local_users, scratch) -> None:
    daemon = shared_daemon(make_daemon, local_users)
    operator, other = local_users["operator"], local_users["other"]
    job = run_as(operator, SUBMIT, str(daemon.socket))
    assert job["state"] == "succeeded", job
    shared = scratch.dir(0o1777)
    target = shared / "mine.png"
    run_as(other, PRE_CREATE_PART, str(shared / ".mine.png.part"))
    done = operator.run([SAI, "export", job["job_id"], "-o", str(target)], env={"SAI_SOCKET": str(daemon.socket)})
    stolen = run_as(other, STEAL, str(shared))
    assert PNG not in stolen.values(), f"another user read the exported image: {stolen}"
    assert done.returncode == 0, done.stderr
    assert target.read_bytes().startswith(bytes.fromhex(PNG))
    assert target.stat().st_uid == operator.uid and target.stat().st_mode & 0o777 == 0o600
    assert sorted(p.name for p in shared.iterdir()) == [".mine.png.part", "mine.png"]
    assert (shared / ".mine.png.part").stat().st_size == 0
