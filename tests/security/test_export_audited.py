"""Items 5 and 14: every byte exported is audited, and previews cannot flood the audit log.

Attacks, run as a real operator on their own job:
- `output.export {"offset": 1}`: before the fix only offset 0 was audited, so an image could be
  read with no record (all but its first byte, which is the same 0x89 in every PNG).
- 120 `output.preview` calls pipelined on one connection: before the fix each was answered and
  audited (the review measured 700 entries/s), flooding the log.
"""

from __future__ import annotations

from tests.security.attack_helpers import run_as, shared_daemon

PREVIEW_BURST = 30
PREVIEWS = 120

SUBMIT_AND_READ = r'''
import time
path = sys.argv[1]
job = rpc(path, "job.submit", prompt="a lighthouse at dusk")["result"]["job_id"]
deadline = time.monotonic() + 240
while rpc(path, "job.get", job_id=job)["result"]["state"] not in ("succeeded", "failed", "cancelled"):
    assert time.monotonic() < deadline, "job did not finish"
    time.sleep(0.1)
first = rpc(path, "output.export", job_id=job, offset=1)
print(json.dumps({"job_id": job, "export": first}))
'''

PREVIEW_FLOOD = r'''
path, job, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
s = socket.socket(socket.AF_UNIX)
s.connect(path)
line = json.dumps({"jsonrpc": "2.0", "id": 1, "method": "output.preview", "params": {"job_id": job}}) + "\n"
s.sendall(line.encode() * n)
replies, data = [], b""
while len(replies) < n:
    data += s.recv(1 << 20)
    *lines, data = data.split(b"\n")
    replies += [json.loads(l) for l in lines if l]
codes = [r["error"]["code"] if "error" in r else 0 for r in replies]
print(json.dumps({"ok": codes.count(0), "limited": codes.count(-32003),
                  "retry_after": next((r["error"]["data"]["retry_after"] for r in replies if "error" in r), None)}))
'''


async def test_export_at_any_offset_is_audited_and_previews_are_rate_limited(make_daemon, local_users,
                                                                              client_of) -> None:
    daemon = shared_daemon(make_daemon, local_users)
    operator = local_users["operator"]
    done = run_as(operator, SUBMIT_AND_READ, str(daemon.socket), timeout=300)
    job_id, export = done["job_id"], done["export"]["result"]
    assert export["offset"] == 1 and export["data"], export

    admin = await client_of(daemon)
    entries = (await admin.call("audit.tail", action="output.export", subject=job_id))["entries"]
    assert [e["details"]["offset"] for e in entries] == [1], entries
    assert entries[0]["actor"]["user"] == operator.name
    assert entries[0]["details"]["length"] == export["size"] - 1

    flood = run_as(operator, PREVIEW_FLOOD, str(daemon.socket), job_id, str(PREVIEWS), timeout=300)
    previews = (await admin.call("audit.tail", action="output.preview", subject=job_id, limit=1000))["entries"]
    print(f"\npreview flood: {flood}, audited {len(previews)} of {PREVIEWS}")
    assert flood["limited"] > 0 and flood["retry_after"] > 0, flood
    assert flood["ok"] <= PREVIEW_BURST + 5, flood
    assert len(previews) == flood["ok"]
    assert (await admin.call("daemon.status"))["you"]["role"] == "admin"
