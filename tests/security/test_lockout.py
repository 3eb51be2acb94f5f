"""Item 12: users holding idle connections cannot lock everyone out, root included.

The attack, run as two real users in the socket's group: each opens its per-user maximum of
connections and sends nothing, which fills `max_connections` (the review's four users × 64
filled the default 256). Before the fix the daemon then refused everyone, root too. Now a
reserve is kept for admins, and once connections have been idle past `idle_timeout`, a newcomer
gets one by closing the longest idle.
"""

from __future__ import annotations

import asyncio

from daemon.client import DaemonClient
from tests.security.attack_helpers import in_background, run_as, settled_sockets, shared_daemon, until_held

PER_USER, TOTAL, RESERVE, IDLE = 12, 24, 4, 3.0

HOLD = r'''
import time
path, n, hold = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
socks = []
for _ in range(n):
    s = socket.socket(socket.AF_UNIX)
    s.connect(path)
    socks.append(s)
def is_open(s):
    s.setblocking(False)
    try:
        s.recv(65536)  # an error line, or the end: refused or closed
        return False
    except BlockingIOError:
        return True
    except OSError:
        return False
time.sleep(1.0)
at_start = [is_open(s) for s in socks]
time.sleep(hold)
at_end = [is_open(s) for s in socks]
print(json.dumps({"open_at_start": sum(at_start), "open_at_end": sum(at_end)}))
'''

STATUS = r'''
print(json.dumps(rpc(sys.argv[1], "daemon.status")))
'''


async def test_idle_connections_cannot_lock_out_admins_or_newcomers(make_daemon, local_users) -> None:
    daemon = shared_daemon(make_daemon, local_users, {
        "daemon": {"max_connections": TOTAL, "max_connections_per_user": PER_USER,
                   "admin_reserve_connections": RESERVE, "idle_timeout": IDLE},
        "model": {"preload": False}})
    viewer, operator = local_users["viewer"], local_users["operator"]
    path = str(daemon.socket)
    sockets = await settled_sockets(daemon.proc.pid)
    viewer_hold = in_background(lambda: run_as(viewer, HOLD, path, str(PER_USER), "12"))
    await until_held(daemon.proc.pid, sockets + PER_USER)
    operator_hold = in_background(lambda: run_as(operator, HOLD, path, str(PER_USER), "10"))
    await until_held(daemon.proc.pid, sockets + TOTAL - RESERVE)
    await asyncio.sleep(0.5)  # the operator's last ones are refused: the daemon is full for them

    async with await DaemonClient.connect(daemon.socket) as root:  # the reserve: root still gets in
        assert (await root.call("daemon.status"))["you"]["role"] == "admin"

    await asyncio.sleep(IDLE)  # now every held connection has been idle past idle_timeout
    newcomer = await asyncio.to_thread(run_as, operator, STATUS, path)
    assert "result" in newcomer, newcomer

    held_by_viewer, held_by_operator = viewer_hold(), operator_hold()
    print(f"\nlock-out: viewer {held_by_viewer}, operator {held_by_operator}")
    at_start = held_by_viewer["open_at_start"] + held_by_operator["open_at_start"]
    at_end = held_by_viewer["open_at_end"] + held_by_operator["open_at_end"]
    assert at_start == TOTAL - RESERVE and at_end == at_start - 1  # the longest idle one made room
    assert "closed to make room" in daemon.read_log()

