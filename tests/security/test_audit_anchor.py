"""Issue 19, items 1 and 10: the audit history rewritten without the signing key, or cut short.

Each test performs the attack for real on a real daemon's state (real SQLite files, the product's
own `Writer` to forge with) as whoever can write `audit.db`, then checks what an operator relies
on: the daemon refuses to start naming the problem, and every verification (fast, deep, the CLI,
an export checked with `--key`) fails naming the first bad entry. The attacker never holds the
installation's signing key: only its public half, which `signing.pub.pem` gives to anyone.
"""

from __future__ import annotations

import base64
import json
import os
import sqlite3
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from daemon.audit.entry import ROTATE_ACTION, canonical_json, check_details, key_id, utc_now
from daemon.audit.export import write_export
from daemon.audit.writer import Writer
from daemon.exitcodes import ExitCode
from tests.harness import DaemonProcess, run_sai

ANCHOR = "keys/audit-anchor.json"


def public_raw(pem: Path) -> bytes:
    key = serialization.load_pem_public_key(pem.read_bytes())
    assert isinstance(key, Ed25519PublicKey)
    return key.public_bytes_raw()


def snapshot(db: Path, to: Path) -> Path:
    with sqlite3.connect(str(db)) as src, sqlite3.connect(str(to)) as dst:
        src.backup(dst)
    return to


def forge(db: Path, work: Path, drop_action: str) -> Path:
    """The attack of item 1: the whole history rewritten with a fresh key by the product's own
    Writer (earlier rotations folded into it), one `drop_action` entry left out, and a last
    `audit.key_rotate` (signed by the fresh key) announcing the installation's current public key,
    so that the daemon signs on after it."""
    with sqlite3.connect(str(snapshot(db, work / "copy.db"))) as conn:
        origin = conn.execute("SELECT value FROM audit_meta WHERE name = 'origin'").fetchone()[0]
        entries = [json.loads(text) for (text,) in conn.execute("SELECT entry FROM audit_entries ORDER BY seq")]
    real = public_raw(db.parent / "keys" / "signing.pub.pem")
    assert drop_action in [e["action"] for e in entries]
    forged = work / "forged.db"
    w = Writer(forged, Ed25519PrivateKey.generate(), origin, 1000)
    w.initialise(origin)
    w.write([(e["actor"], e["action"], e["subject"], canonical_json(e["details"]), e["time"])
             for e in entries[1:] if e["action"] not in (drop_action, ROTATE_ACTION)])
    announce = {"old_key_id": w.kid, "new_key_id": key_id(real), "new_public_key": base64.b64encode(real).decode()}
    w.write([(entries[-1]["actor"], ROTATE_ACTION, key_id(real), check_details(announce), utc_now())])
    w.conn.execute("INSERT INTO audit_keys VALUES (?, ?, ?, ?)", (key_id(real), real, w.size, utc_now()))
    w.checkpoint()
    w.close()
    return forged


def replace_log(db: Path, forged: Path) -> None:
    """Swap every row of the live log for the forged ones, in one transaction through SQLite."""
    conn = sqlite3.connect(str(db), isolation_level=None)
    conn.execute("PRAGMA busy_timeout=10000")
    conn.execute("ATTACH ? AS forged", (str(forged),))
    conn.execute("BEGIN IMMEDIATE")
    for table in ("audit_entries", "audit_nodes", "audit_checkpoints", "audit_keys"):
        conn.execute(f"DELETE FROM main.{table}")
        conn.execute(f"INSERT INTO main.{table} SELECT * FROM forged.{table}")
    conn.execute("COMMIT")
    conn.close()


def refused(daemon: DaemonProcess) -> str:
    """Start `daemon` and expect it to refuse (ExitCode.NOT_STARTED); its log."""
    daemon.start(wait=False)
    try:
        daemon.wait_answering(90)
    except RuntimeError:
        assert daemon.proc is not None and daemon.proc.returncode == ExitCode.NOT_STARTED, daemon.read_log()[-3000:]
        return daemon.read_log()
    pytest.fail(f"the daemon started on a tampered audit log:\n{daemon.read_log()[-3000:]}")


async def history(client: Any) -> dict[str, Any]:
    """Some history worth hiding: the queue paused by an admin, two jobs submitted; a checkpoint."""
    await client.call("queue.pause")
    for prompt in ("a lighthouse at dusk", "a red bicycle"):
        await client.call("job.submit", prompt=prompt)
    await client.call("audit.checkpoint")
    return await client.call("daemon.status")


async def test_a_log_rewritten_with_a_fresh_key_is_refused_everywhere(make_daemon: Any, client_of: Any,
                                                                       tmp_path: Path) -> None:
    daemon = make_daemon()
    client = await client_of(daemon)
    await history(client)
    db = daemon.state_dir / "audit.db"
    first_kid = key_id(public_raw(daemon.state_dir / "keys" / "signing.pub.pem"))
    forged = forge(db, tmp_path, drop_action="queue.pause")
    replace_log(db, forged)

    for deep in (False, True):
        result = await client.call("audit.verify", deep=deep)
        assert not result["ok"] and result["first_bad"] == 0, result
        assert f"must start at key {first_kid}" in result["reason"] and ANCHOR in result["reason"]
    pem = str(daemon.state_dir / "keys" / "signing.pub.pem")
    for flags in ((), ("--deep",), ("--key", pem)):
        cli = run_sai("audit", "verify", *flags, socket_path=daemon.socket)
        assert cli.returncode == ExitCode.VERIFY_FAILED and "first bad entry: 0" in cli.stderr, cli.stderr

    export = tmp_path / "export"
    write_export(forged, export)  # what the attacker hands a third party
    cli = run_sai("audit", "verify-export", "--deep", "--key", str(daemon.state_dir / "keys" / "signing.pub.pem"),
                  str(export))
    assert cli.returncode == ExitCode.VERIFY_FAILED, cli.stderr
    assert "first bad entry: 0" in cli.stderr and f"key {first_kid}" in cli.stderr, cli.stderr

    daemon.kill9()
    log = refused(make_daemon(state_from=daemon, start=False))
    assert "not starting" in log and f"must start at key {first_kid}" in log and "was rewritten" in log


async def test_a_truncated_log_is_refused_and_verify_says_truncated(make_daemon: Any, client_of: Any) -> None:
    daemon = make_daemon()
    client = await client_of(daemon)
    await history(client)
    size = (await client.call("audit.tail", limit=1))["size"]
    cut = size - 3
    with sqlite3.connect(str(daemon.state_dir / "audit.db")) as conn:  # the attack: the last 3 entries go
        conn.execute("PRAGMA busy_timeout=10000")
        conn.execute("DELETE FROM audit_entries WHERE seq >= ?", (cut,))
        conn.execute("DELETE FROM audit_checkpoints WHERE tree_size > ?", (cut,))
    for deep in (False, True):
        result = await client.call("audit.verify", deep=deep)
        assert not result["ok"] and result["first_bad"] == cut, result
        assert "truncated" in result["reason"] and f"vouches for {size} entries" in result["reason"]
    cli = run_sai("audit", "verify", socket_path=daemon.socket)
    assert cli.returncode == ExitCode.VERIFY_FAILED, cli.stderr
    assert f"first bad entry: {cut}" in cli.stderr and "truncated" in cli.stderr

    daemon.kill9()
    log = refused(make_daemon(state_from=daemon, start=False))
    assert f"entries {cut} to {size - 1} were removed (the log was truncated)" in log


async def test_the_anchor_is_kept_beside_the_keys_and_shown_in_status(make_daemon: Any, client_of: Any) -> None:
    daemon = make_daemon()
    client = await client_of(daemon)
    status = await history(client)
    anchor, size = status["audit"]["anchor"], status["audit"]["size"]
    checkpoint = (await client.call("audit.checkpoint", fresh=False))["checkpoint"]
    assert anchor["size"] == size and anchor["file"] == str(daemon.state_dir / ANCHOR) and anchor["error"] is None
    assert checkpoint.split("\n")[1:3] == [str(size), base64.b64encode(bytes.fromhex(anchor["root"])).decode()]
    path = daemon.state_dir / ANCHOR
    on_disk = json.loads(path.read_text())
    assert on_disk["size"] == size and on_disk["root"] == anchor["root"] and on_disk["checkpoint"] == checkpoint
    assert os.stat(path).st_mode & 0o777 == 0o600 and os.stat(path).st_uid == os.getuid()
    assert [p.name for p in path.parent.iterdir() if ".tmp-" in p.name] == []
    assert daemon.terminate() == 0
    assert json.loads(path.read_text())["size"] > size  # the shutdown checkpoint moved it on


async def test_a_job_with_no_submit_entry_is_flagged(make_daemon: Any, client_of: Any) -> None:
    """Entries after the last anchored checkpoint are vouched for by nothing outside the log, so
    cutting them leaves a log that extends the anchor; the jobs they recorded give the cut away."""
    daemon = make_daemon({"audit": {"checkpoint_every_entries": 100000, "checkpoint_every_seconds": 3600}})
    client = await client_of(daemon)
    await client.call("queue.pause")
    await client.call("audit.checkpoint")
    job_id = (await client.call("job.submit", prompt="a lighthouse"))["job_id"]
    submit = (await client.call("audit.tail", action="job.submit", limit=1))["entries"][0]
    assert submit["subject"] == job_id
    daemon.kill9()  # no shutdown checkpoint: the submit stays after the anchored one
    with sqlite3.connect(str(daemon.state_dir / "audit.db")) as conn:
        conn.execute("DELETE FROM audit_entries WHERE seq >= ?", (submit["seq"],))

    again = make_daemon(state_from=daemon)
    client = await client_of(again)
    alerts = (await client.call("alerts.list"))["alerts"]
    flagged = [a for a in alerts if a["key"] == "audit.unrecorded_jobs"]
    assert flagged and flagged[0]["severity"] == "critical" and job_id in flagged[0]["message"]
    result = await client.call("audit.verify")
    assert not result["ok"] and result["unrecorded_jobs"] == [job_id] and job_id in result["reason"]
    cli = run_sai("audit", "verify", socket_path=again.socket)
    assert cli.returncode == ExitCode.VERIFY_FAILED and job_id in cli.stderr


async def test_an_old_state_dir_is_anchored_on_first_start_but_not_a_forged_one(make_daemon: Any, client_of: Any,
                                                                                 tmp_path: Path) -> None:
    """A state dir from before anchors has no anchor file: the first start verifies the log, pins
    entry 0's key if the key store holds it, records that it did, and goes on. A log rewritten
    with a fresh key before the upgrade is refused: its first key is not in the key store."""
    daemon = make_daemon()
    client = await client_of(daemon)
    await history(client)
    await client.call("keys.rotate")
    assert daemon.terminate() == 0
    keys = daemon.state_dir / "keys"
    pinned = json.loads((keys / "audit-anchor.json").read_text())["first_key_id"]
    (keys / "audit-anchor.json").unlink()

    again = make_daemon(state_from=daemon)
    client = await client_of(again)
    assert "no audit anchor" in again.read_log()
    made = (await client.call("audit.tail", action="audit.anchor"))["entries"]
    assert len(made) == 1 and "made from the verified log" in made[0]["details"]["reason"]
    status = await client.call("daemon.status")
    assert status["audit"]["anchor"]["first_key_id"] == pinned
    assert (await client.call("audit.verify", deep=True))["ok"]
    first_pem = keys / f"signing-{pinned}.pub.pem"  # the anchor names the key as the key store does
    assert run_sai("audit", "verify", "--key", str(first_pem), socket_path=again.socket).returncode == 0
    cli = run_sai("audit", "verify", "--key", str(keys / "signing.pub.pem"), socket_path=again.socket)
    assert cli.returncode == ExitCode.VERIFY_FAILED, cli.stderr
    assert "first bad entry: 0" in cli.stderr and f"must start at key {pinned}" not in cli.stderr
    assert "pinned by the key given to verify" in cli.stderr
    assert again.terminate() == 0

    (keys / "audit-anchor.json").unlink()
    replace_log(daemon.state_dir / "audit.db", forge(daemon.state_dir / "audit.db", tmp_path, "queue.pause"))
    log = refused(make_daemon(state_from=daemon, start=False))
    assert "first bad entry: 0" in log and "missing from the key store" in log
