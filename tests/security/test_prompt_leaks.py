"""Item 6: a viewer learns nothing of another user's prompt.

The attacks, run as a real viewer while a real operator works:
- confirm a guessed prompt: SHA-256 the guess and look for it in `audit.tail` and the `audit`
  events (before the fix every job.submit entry carried an unsalted `prompt_sha256`);
- read the flagged terms of someone's prompt from `job.get` and the `job` events (`warnings`);
- read the rule someone's refused prompt hit from the `job.refuse` entries and events.
The owner and admins still see their warnings and refusals, and the audit log still verifies.
"""

from __future__ import annotations

import asyncio
import hashlib
import json

from daemon.crypto.keys import KeyStore
from tests.security.attack_helpers import in_background, run_as, settled_sockets, shared_daemon, until_held

FLAGGED, BLOCKED = "dragon", "bomb"
PROMPT = f"a red {FLAGGED} over the harbour"
REFUSED = f"how to build a {BLOCKED}"

WATCH = r'''
import time
path, seconds = sys.argv[1], float(sys.argv[2])
s = socket.socket(socket.AF_UNIX)
s.connect(path)
s.sendall(b'{"jsonrpc":"2.0","id":1,"method":"events.subscribe","params":{"topics":["job","audit"]}}\n')
s.settimeout(0.2)
data, deadline = b"", time.monotonic() + seconds
while time.monotonic() < deadline:
    try:
        data += s.recv(1 << 20)
    except socket.timeout:
        pass
print(json.dumps({"events": data.decode()}))
'''

WORK = r'''
path, prompt, refused = sys.argv[1:4]
job = rpc(path, "job.submit", prompt=prompt)["result"]
refusal = rpc(path, "job.submit", prompt=refused)["error"]
print(json.dumps({"job": job, "refusal": refusal, "own": rpc(path, "job.get", job_id=job["job_id"])["result"]}))
'''

PEEK = r'''
path, job_id = sys.argv[1:3]
print(json.dumps({"tail": rpc(path, "audit.tail", limit=100), "job": rpc(path, "job.get", job_id=job_id),
                  "list": rpc(path, "job.list")}))
'''


async def test_viewer_cannot_confirm_prompts_or_read_flags_and_refusals(make_daemon, local_users, client_of) -> None:
    daemon = shared_daemon(make_daemon, local_users, {
        "policy": {"flagged_terms": [FLAGGED], "blocked_terms": [BLOCKED]},
        "queue": {"start_paused": True}, "model": {"preload": False}})
    viewer, operator = local_users["viewer"], local_users["operator"]
    sockets = await settled_sockets(daemon.proc.pid)
    watching = in_background(lambda: run_as(viewer, WATCH, str(daemon.socket), "8"))
    await until_held(daemon.proc.pid, sockets + 1)
    await asyncio.sleep(0.5)  # subscribed before the operator works
    work = run_as(operator, WORK, str(daemon.socket), PROMPT, REFUSED)
    assert work["own"]["warnings"] and FLAGGED in json.dumps(work["own"]["warnings"])  # the owner sees them
    assert work["refusal"]["code"] == -32005 and BLOCKED in work["refusal"]["message"]
    job_id = work["job"]["job_id"]
    seen = run_as(viewer, PEEK, str(daemon.socket), job_id)
    events = watching()["events"]

    guess = hashlib.sha256(PROMPT.encode()).hexdigest()
    for name, text in (("audit.tail/job.get/job.list", json.dumps(seen)), ("events", events)):
        assert guess not in text, f"{name}: the unsalted SHA-256 of the prompt confirms a guess"
        assert FLAGGED not in text, f"{name}: a flagged term of another user's prompt"
        assert BLOCKED not in text, f"{name}: the rule another user's refused prompt hit"
    assert '"job.refuse"' in events and '"job.submit"' in events  # the entries still reach the viewer
    refuse = next(e for e in seen["tail"]["result"]["entries"] if e["action"] == "job.refuse")
    assert refuse["redacted"] == ["reason", "rule"] and refuse["actor"]["user"] == operator.name

    admin = await client_of(daemon)
    entries = (await admin.call("audit.tail", limit=100))["entries"]
    assert next(e for e in entries if e["action"] == "job.refuse")["details"]["rule"] == f"term {BLOCKED!r}"
    submit = next(e for e in entries if e["action"] == "job.submit" and e["subject"] == job_id)["details"]
    assert "prompt_sha256" not in submit
    from daemon.crypto.prompt_mac import PromptMac

    keys = KeyStore.open(daemon.state_dir / "keys")  # only who holds the key store can check a prompt
    assert submit["prompt_hmac"] == PromptMac(keys).digest(PROMPT, submit["prompt_mac_kid"])
    assert (await admin.call("job.get", job_id=job_id))["warnings"]
    assert (await admin.call("audit.verify", deep=True))["ok"] is True
