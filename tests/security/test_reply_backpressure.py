"""Item 3: a viewer pipelining big replies it never reads must not grow the daemon without bound.

The attack, run as a real viewer: 64 connections (the most one user may hold), each writing
`audit.tail {"limit": 1000}` requests as fast as the socket takes them and never reading a reply,
reconnecting whenever the daemon drops one. Before the fix every pipelined request was answered
and its reply (objects and bytes) held while it waited for a reader: the daemon grew by gigabytes.
"""

from __future__ import annotations

import asyncio
import time

import psutil

from tests.security.attack_helpers import fill_audit, in_background, run_as, shared_daemon, status_p50

CONNECTIONS = 64
ATTACK_SECONDS = 20.0
MAX_UNREAD_MB = 4
IN_FLIGHT_PER_USER = 128  # daemon.max_in_flight_per_user's default
REPLY_MIB = 1  # one audit.tail of 1,000 entries is under 1 MiB of JSON
SLACK_MIB = 150
"""Allocator slack and the buffers of 64 sockets; the bound itself is per connection."""

PIPELINE = r'''
import socket, sys, time
path, conns, seconds = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
line = b'{"jsonrpc":"2.0","id":1,"method":"audit.tail","params":{"limit":1000}}\n' * 64
def opened():
    s = socket.socket(socket.AF_UNIX)
    s.connect(path)
    s.setblocking(False)
    return s
socks, sent, reconnects = [opened() for _ in range(conns)], 0, 0
deadline = time.monotonic() + seconds
while time.monotonic() < deadline:
    for i, s in enumerate(socks):
        try:
            sent += s.send(line) // 73
        except BlockingIOError:
            pass
        except OSError:
            s.close()
            try:
                socks[i] = opened()
                reconnects += 1
            except OSError:
                pass
    time.sleep(0.01)
print(json.dumps({"requests_sent": sent, "reconnects": reconnects}))
'''


async def test_pipelining_without_reading_keeps_the_daemon_bounded(make_daemon, local_users, client_of) -> None:
    daemon = shared_daemon(make_daemon, local_users, {
        "daemon": {"max_unread_mb": MAX_UNREAD_MB},
        "queue": {"rate_per_minute": 1e6, "burst": 100000, "max_queued_per_user": 100000},
        "model": {"preload": False}})
    admin = await client_of(daemon)
    await fill_audit(admin, 1100)
    process = psutil.Process(daemon.proc.pid)
    before_mib = process.memory_info().rss / 2**20
    quiet_p50 = await status_p50(admin)

    join = in_background(lambda: run_as(local_users["viewer"], PIPELINE, str(daemon.socket), str(CONNECTIONS),
                                        str(ATTACK_SECONDS), timeout=ATTACK_SECONDS + 60))
    # docs/protocol.md: per connection max_unread_mb plus a reply or two; per user the requests in hand
    budget_mib = CONNECTIONS * (MAX_UNREAD_MB + 2 * REPLY_MIB) + IN_FLIGHT_PER_USER * REPLY_MIB + SLACK_MIB
    peak_mib = before_mib
    started = time.monotonic()
    loaded_p50 = None
    while time.monotonic() - started < ATTACK_SECONDS:
        peak_mib = max(peak_mib, process.memory_info().rss / 2**20)
        if peak_mib - before_mib > 2 * budget_mib:
            process.send_signal(9)  # the old behaviour: stop before it takes the machine down
            break
        if loaded_p50 is None and time.monotonic() - started > ATTACK_SECONDS / 2:
            loaded_p50 = await status_p50(admin, 9)
        else:
            await asyncio.sleep(0.2)
    attack = join()
    figures = {"before_mib": round(before_mib), "peak_mib": round(peak_mib), "budget_mib": budget_mib,
               "status_ratio": None if loaded_p50 is None else round(loaded_p50 / quiet_p50, 1), **attack}
    print(f"\nreply back-pressure: {figures}")
    assert peak_mib - before_mib < budget_mib, figures
    assert daemon.proc.poll() is None, figures
    assert loaded_p50 is not None and loaded_p50 / quiet_p50 < 50, figures

