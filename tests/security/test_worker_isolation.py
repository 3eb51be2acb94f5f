"""Issue 19 item 2: nothing in the daemon's working directory runs in its children.

An unprivileged user plants Python packages in a world-writable directory; root starts the
daemon from there with the installed `sai`. Before the fix the worker (`python -m
daemon.worker.main`, working directory first on `sys.path`) imported the planted `daemon` package
as root, and the deep-verify pool (multiprocessing "spawn": `python -c ...`, same) the planted
`multiprocessing`; the planted code then handed over to the real package, so everything looked
normal.
"""

from __future__ import annotations

import multiprocessing
import os
from pathlib import Path

import daemon as real_package
from daemon.audit.verify import POOL_MIN_ENTRIES
from tests.security.attack_helpers import fill_audit, run_as
from tests.security.path_attacks import SAI, scratch  # noqa: F401  (a fixture)

PLANT = r'''
import json, os, sys
shared = sys.argv[1]
for package, real in (("daemon", sys.argv[2]), ("multiprocessing", sys.argv[3])):
    os.makedirs(os.path.join(shared, package), exist_ok=True)
    with open(os.path.join(shared, package, "__init__.py"), "w") as f:
        f.write("import os\n"
                f"open(os.path.join({shared!r}, 'ran-as-%d-{package}' % os.getuid()), 'w').close()\n"
                f"__path__[:] = [{real!r}]\n"
                f"exec(compile(open({real!r} + '/__init__.py').read(), __file__, 'exec'))\n")
print(json.dumps(sorted(os.listdir(shared))))
'''
"""The attacker's planting: `daemon` and `multiprocessing` packages that record who imported them,
then hand over to the real ones, so that everything goes on as usual."""
REAL = (str(Path(real_package.__file__).parent), str(Path(multiprocessing.__file__).parent))


async def test_a_package_planted_in_the_working_directory_never_runs_in_the_worker(
        make_daemon, local_users, scratch, client_of, wait_for) -> None:
    shared = scratch.dir(0o777)
    planted = run_as(local_users["other"], PLANT, str(shared), *REAL)
    assert planted == ["daemon", "multiprocessing"]
    daemon = make_daemon(start=False).start(program=[SAI], cwd=shared)
    client = await client_of(daemon)
    job = await wait_for(client, (await client.call("job.submit", prompt="a planted package"))["job_id"])
    assert job["state"] == "succeeded", job
    assert not list(shared.glob("ran-as-*")), "the planted package ran in the worker"
    [worker] = daemon.worker_pids()
    assert os.readlink(f"/proc/{worker}/cwd") == "/"
    assert b"\0-I\0" in Path(f"/proc/{worker}/cmdline").read_bytes()


async def test_a_package_planted_in_the_working_directory_never_runs_in_the_verify_pool(
        make_daemon, local_users, scratch, client_of) -> None:
    shared = scratch.dir(0o777)
    run_as(local_users["other"], PLANT, str(shared), *REAL)
    busy = {"queue": {"rate_per_minute": 1e6, "burst": 100000, "max_queued_per_user": 100000},
            "model": {"preload": False}}
    daemon = make_daemon(busy, start=False).start(program=[SAI], cwd=shared)
    admin = await client_of(daemon)
    await fill_audit(admin, POOL_MIN_ENTRIES)
    assert (await admin.call("audit.verify", deep=True))["ok"]
    assert not list(shared.glob("ran-as-*")), "the planted package ran in the verify pool"
