"""Item 4: a viewer cannot keep the daemon's cores busy with audit verification.

The attack, run as a real viewer: three deep verifications at once on three connections, then
a flood of sixteen more. Before the fix every one ran (each a full pass over the log, in a pool
of one process per CPU on large logs): the review measured 151 s of full CPU for 64 calls.
Also: `audit.tail` by subject is served by an index that logs made before it get at start.
"""

from __future__ import annotations

import sqlite3
import time

from tests.security.attack_helpers import fill_audit, run_as, shared_daemon

ENTRIES = 4000

VERIFY_FLOOD = r'''
path, n = sys.argv[1], int(sys.argv[2])
socks = []
for _ in range(n):  # every connection open first, then the requests back to back: they arrive together
    s = socket.socket(socket.AF_UNIX)
    s.connect(path)
    socks.append(s)
line = b'{"jsonrpc":"2.0","id":1,"method":"audit.verify","params":{"deep":true}}\n'
for s in socks:
    s.sendall(line)
replies = []
for s in socks:
    data = b""
    while not data.endswith(b"\n"):
        data += s.recv(1 << 16)
    replies.append(json.loads(data))
print(json.dumps(replies))
'''

TAIL_SQL = ("SELECT seq, entry, leaf_hash, signature FROM audit_entries "
            "WHERE json_extract(entry, '$.subject') = ? ORDER BY seq DESC LIMIT 50")


def _outcomes(replies: list[dict]) -> tuple[int, list[dict]]:
    ok = sum(1 for r in replies if "result" in r and r["result"]["ok"])
    return ok, [r["error"] for r in replies if "error" in r]


async def test_verify_runs_one_at_a_time_and_is_rate_limited(make_daemon, local_users, client_of) -> None:
    daemon = shared_daemon(make_daemon, local_users, {
        "queue": {"rate_per_minute": 1e6, "burst": 100000, "max_queued_per_user": 100000},
        "model": {"preload": False}})
    admin = await client_of(daemon)
    await fill_audit(admin, ENTRIES)
    viewer = local_users["viewer"]

    ok, errors = _outcomes(run_as(viewer, VERIFY_FLOOD, str(daemon.socket), "3"))
    print(f"\n3 concurrent deep verifies: {ok} ran, {[e['data'].get('reason') for e in errors]}")
    assert ok == 1, errors
    assert [e["code"] for e in errors] == [-32003, -32003]
    assert all(e["data"]["reason"] == "verify_running" and e["data"]["retry_after"] > 0 for e in errors)

    ok, errors = _outcomes(run_as(viewer, VERIFY_FLOOD, str(daemon.socket), "16"))
    limited = [e for e in errors if "method" in e["data"]]
    print(f"16 more: {ok} ran, {len(limited)} over the rate, {len(errors) - len(limited)} while one ran")
    assert ok <= 2 and len(limited) >= 14, errors  # the burst of 3 is spent but for at most 2
    assert all(e["code"] == -32003 and e["data"]["retry_after"] > 0 for e in errors)
    assert (await admin.call("audit.verify", deep=True))["ok"] is True  # admins are not held to it


async def test_tail_by_subject_uses_an_index_older_logs_get_too(make_daemon, client_of) -> None:
    daemon = make_daemon(config={"queue": {"rate_per_minute": 1e6, "burst": 100000, "max_queued_per_user": 100000},
                                 "model": {"preload": False}})
    await fill_audit(await client_of(daemon), ENTRIES)
    daemon.terminate()
    db = daemon.state_dir / "audit.db"
    with sqlite3.connect(db) as conn:  # a log as the daemon wrote it before the index existed
        conn.execute("DROP INDEX IF EXISTS audit_entries_subject")
        subject = conn.execute("SELECT json_extract(entry, '$.subject') FROM audit_entries "
                               "WHERE seq = 10").fetchone()[0]
        scan = _timed(conn, subject)

    again = make_daemon(state_from=daemon, config={"model": {"preload": False}})
    entries = (await (await client_of(again)).call("audit.tail", subject=subject))["entries"]
    assert [e["subject"] for e in entries] == [subject]
    with sqlite3.connect(db) as conn:
        plan = " ".join(row[-1] for row in conn.execute("EXPLAIN QUERY PLAN " + TAIL_SQL, (subject,)))
        indexed = _timed(conn, subject)
    print(f"\ntail by subject over {ENTRIES} entries: scan/index = {scan / indexed:.0f}x ({plan})")
    assert "audit_entries_subject" in plan


def _timed(conn: sqlite3.Connection, subject: str, rounds: int = 20) -> float:
    started = time.perf_counter()
    for _ in range(rounds):
        conn.execute(TAIL_SQL, (subject,)).fetchall()
    return time.perf_counter() - started
