"""Item 14: integers past 64 bits are invalid params naming the field, never an internal error.

Before the fix `audit.tail {"before_seq": 10**29}` and `alerts.ack` with a 32-digit id reached
SQLite, failed with OverflowError, answered -32603 and left a traceback in the daemon log.
"""

from __future__ import annotations

from tests.security.attack_helpers import run_as, shared_daemon

ATTACK = r'''
path = sys.argv[1]
calls = [("audit.tail", {"before_seq": 10**29}), ("audit.tail", {"before_seq": -10**29}),
         ("audit.tail", {"before_seq": 1e29}), ("audit.proof", {"index": 10**30}),
         ("alerts.ack", {"alert_id": "3" * 32}), ("alerts.ack", {"alert_id": 10**31}),
         ("daemon.status", {})]
print(json.dumps([rpc(path, method, **params) for method, params in calls]))
'''


def test_out_of_range_integers_are_invalid_params(make_daemon, local_users) -> None:
    daemon = shared_daemon(make_daemon, local_users, {"model": {"preload": False}})
    replies = run_as(local_users["operator"], ATTACK, str(daemon.socket))
    *errors, status = replies
    fields = ["before_seq", "before_seq", "before_seq", "index", "alert_id", "alert_id"]
    for reply, field in zip(errors, fields):
        assert reply["error"]["code"] == -32602, replies
        assert reply["error"]["data"]["field"] == field, reply
        assert reply["error"]["data"]["reason"], reply
    assert "result" in status, status
    assert "Traceback" not in daemon.read_log()
