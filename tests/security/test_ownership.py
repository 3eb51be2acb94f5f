"""Issue 19 item 8: the daemon refuses a state it does not own, or that others can replace.

Before the fix a state dir made by another user was used without a word: the root daemon kept
that user's key store (a KEK they know) and wrote into databases they own, so they could read
every prompt. And a state dir under a directory others can write could be swapped for theirs
between two starts. Now the daemon refuses to start, naming the path and the command that fixes
it, when the state dir, `keys/` or anything in them belongs to another user, or when a directory
above the state dir is writable by others (not sticky) or belongs to someone but root and us.
"""

from __future__ import annotations

from tests.security.attack_helpers import run_as
from tests.security.path_attacks import refused, scratch  # noqa: F401  (a fixture)

OWN_STATE = r'''
import json, os, sys
from daemon.crypto.keys import KeyStore
state = sys.argv[1]
os.makedirs(os.path.join(state, "models"))
KeyStore.open(os.path.join(state, "keys"))
fd = os.open(os.path.join(state, "jobs.sqlite3"), os.O_WRONLY | os.O_CREAT, 0o666)
os.fchmod(fd, 0o666)
os.close(fd)
print(json.dumps(sorted(os.listdir(state))))
'''
"""The attacker lays out a state dir of their own: a key store whose KEK they hold, and a jobs
database they own (SQLite keeps what it finds, and makes the -wal/-shm files beside it)."""

SWAP_STATE = r'''
import json, os, sys
state = sys.argv[1]
os.rename(state, state + ".moved")
os.mkdir(state, 0o777)
os.chmod(state, 0o777)
print(json.dumps(os.stat(state).st_uid))
'''
"""The attacker moves the daemon's state dir aside (the parent lets them) and puts their own in its place."""


def test_a_state_dir_made_by_another_user_is_refused(make_daemon, local_users, scratch) -> None:
    other = local_users["other"]
    state = scratch.dir(0o1777) / "state"
    assert run_as(other, OWN_STATE, str(state)) == ["jobs.sqlite3", "keys", "models"]
    daemon = make_daemon(start=False)
    daemon.state_dir = state
    log = refused(daemon)
    assert f"{state} belongs to {other.name} (uid {other.uid})" in log and f"chown -R root {state}" in log
    assert not (state / "audit.db").exists() and (state / "jobs.sqlite3").stat().st_size == 0


def test_a_state_dir_under_a_directory_others_can_write_is_refused(make_daemon, local_users, scratch) -> None:
    parent = scratch.dir(0o777)
    state = parent / "state"
    state.mkdir(mode=0o700)
    assert run_as(local_users["other"], SWAP_STATE, str(state)) == local_users["other"].uid
    daemon = make_daemon(start=False)
    daemon.state_dir = state
    log = refused(daemon)
    assert f"{parent} is writable by other users (mode 0777)" in log and f"chmod go-w {parent}" in log
    assert list(state.iterdir()) == []
