"""Every action on record: a real daemon's audit chain after a day's work in miniature."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


async def test_actions_are_audited_without_prompt_text_and_the_chain_verifies(make_daemon, client_of, wait_for,
                                                                             tmp_path):
    daemon = make_daemon({"policy": {"blocked_terms": ["forbidden"]}})
    client = await client_of(daemon)
    await client.call("events.subscribe", topics=["audit"])
    secret = "a confidential lighthouse blueprint"
    job = await wait_for(client, (await client.call("job.submit", prompt=secret, negative_prompt="fog"))["job_id"])
    assert job["state"] == "succeeded"
    try:
        await client.call("job.submit", prompt="something forbidden")
    except Exception as exc:
        assert exc.code == -32005
    await client.call("queue.pause")
    queued = (await client.call("job.submit", prompt="later", priority="low"))["job_id"]
    await client.call("job.set_priority", job_id=queued, priority="high")
    await client.call("job.cancel", job_id=queued)
    await client.call("queue.resume")
    await client.call("output.export", job_id=job["job_id"], index=0)
    event = await client.next_event(timeout=30)
    assert event["topic"] == "audit" and "seq" in event["data"]
    daemon.terminate()
    again = make_daemon(state_from=daemon, config={"model": {"preload": False}})
    client = await client_of(again)
    entries = (await client.call("audit.tail", limit=200))["entries"]
    actions = [e["action"] for e in entries]
    for expected in ("keys.create", "daemon.start", "model.load", "job.submit", "job.refuse", "job.start",
                     "output.write", "job.finish", "queue.pause", "job.priority", "job.cancel", "queue.resume",
                     "output.export", "daemon.stop"):
        assert expected in actions, expected
    submit = next(e for e in entries if e["action"] == "job.submit" and e["subject"] == job["job_id"])
    assert submit["actor"]["uid"] >= 0 and submit["actor"]["user"] and submit["actor"]["pid"] > 0
    assert len(submit["details"]["prompt_hmac"]) == 64 and "prompt_sha256" not in submit["details"]
    assert (await client.call("audit.verify"))["ok"] is True
    assert (await client.call("audit.verify", deep=True))["ok"] is True
    # No prompt text anywhere in the audit database or its export.
    raw = (again.state_dir / "audit.db").read_bytes()
    assert secret.encode() not in raw and b"something forbidden" not in raw
    export = tmp_path / "export"
    await client.call("audit.export", directory=str(export))
    out = subprocess.run([sys.executable, "-m", "console.cli", "audit", "verify-export", str(export), "--json"],
                         capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)["ok"] is True
    assert all(secret.encode() not in p.read_bytes() for p in export.rglob("*") if p.is_file())
