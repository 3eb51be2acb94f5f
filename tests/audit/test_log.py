"""AuditLog: appends, group commit, tail, events, checkpoints, proofs, reopening, key rotation."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import sqlite3
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from hypothesis import given, settings
from hypothesis import strategies as st

from daemon.audit import checkpoint as cpmod
from daemon.audit import merkle
from daemon.audit.entry import canonical_json, check_details, entry_bytes
from daemon.audit.log import AuditClosed, AuditKeyMismatch, AuditLog
from daemon.audit.verify import verify_db
from tests.audit.audit_helpers import ALICE, BOB, ORIGIN, build, record


def stored_rows(path: Path) -> list[tuple[int, str, bytes, bytes]]:
    with sqlite3.connect(str(path)) as conn:
        return conn.execute("SELECT seq, entry, leaf_hash, signature FROM audit_entries ORDER BY seq").fetchall()


def checkpoint_sizes(path: Path) -> list[int]:
    with sqlite3.connect(str(path)) as conn:
        return [s for (s,) in conn.execute("SELECT tree_size FROM audit_checkpoints ORDER BY tree_size")]


async def test_append_returns_the_durable_signed_entry(tmp_path: Path, signing_key: Ed25519PrivateKey) -> None:
    log = await AuditLog.open(tmp_path / "a.db", signing_key, ORIGIN)
    entry = await log.append(ALICE, "job.submit", "job-1", {"prompt_sha256": "ab" * 32, "priority": "high"})
    assert entry["seq"] == 1 and log.size == 2  # entry 0 is audit.init
    assert entry["actor"] == ALICE and entry["action"] == "job.submit" and entry["subject"] == "job-1"
    assert entry["details"] == {"prompt_sha256": "ab" * 32, "priority": "high"}
    rows = stored_rows(tmp_path / "a.db")  # another connection sees it: committed before append returned
    seq, text, leaf, sig = rows[1]
    fields = {k: v for k, v in entry.items() if k not in ("leaf_hash", "signature")}
    assert text.encode() == canonical_json(fields).encode()
    assert leaf == hashlib.sha256(b"\x00" + text.encode()).digest() and leaf.hex() == entry["leaf_hash"]
    signing_key.public_key().verify(sig, leaf)
    init = json.loads(rows[0][1])
    assert init["action"] == "audit.init" and init["details"]["origin"] == ORIGIN
    assert base64.b64decode(init["details"]["public_key"]) == signing_key.public_key().public_bytes_raw()
    await log.close()


@settings(max_examples=80, deadline=None)
@given(st.dictionaries(st.text(min_size=1, max_size=8), st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False) | st.text(),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3),
    max_leaves=8), max_size=5),
    st.text(), st.text(), st.integers(0, 2**31))
def test_entry_bytes_are_canonical_json(details: dict, user: str, subject: str, seq: int) -> None:
    try:
        details_json = check_details(details)
    except ValueError:
        return  # a forbidden key name or a lone surrogate: refused, nothing to compare
    actor = {"uid": seq % 65536, "user": user, "pid": seq}
    try:
        data = entry_bytes(seq, "2025-01-01T00:00:00.000000Z", actor, "job.submit", subject, details_json, "k1")
    except UnicodeEncodeError:
        return
    expected = canonical_json({"seq": seq, "time": "2025-01-01T00:00:00.000000Z", "actor": actor,
                               "action": "job.submit", "subject": subject, "details": details, "key_id": "k1"})
    assert data == expected.encode("utf-8")


async def test_concurrent_appends_share_commits(tmp_path: Path, signing_key: Ed25519PrivateKey) -> None:
    log = await AuditLog.open(tmp_path / "a.db", signing_key, ORIGIN)
    entries = await asyncio.gather(*(log.append(*record(i)) for i in range(600)))
    assert sorted(e["seq"] for e in entries) == list(range(1, 601))
    assert [e["subject"] for e in entries] == [record(i)[2] for i in range(600)]  # queue order kept
    assert log.stats["entries"] == 600 and log.stats["commits"] < 60
    await log.close()
    assert (await _verify(tmp_path / "a.db"))["ok"]


async def _verify(path: Path, **kw: object) -> dict:
    return await asyncio.to_thread(verify_db, path, **kw)


@pytest.mark.parametrize("details", [
    {"prompt": "a lighthouse"}, {"negative_prompt": "blurry"}, {"passphrase": "hunter2"},
    {"job": {"params": {"Prompt": "nested and capitalised"}}}, {"list": [{"password": "x"}]},
])
async def test_prompt_text_and_secrets_are_refused(tmp_path: Path, signing_key: Ed25519PrivateKey,
                                                  details: dict) -> None:
    log = await AuditLog.open(tmp_path / "a.db", signing_key, ORIGIN)
    with pytest.raises(ValueError, match="hash"):
        await log.append(ALICE, "job.submit", "job-1", details)
    assert log.size == 1
    await log.close()


@pytest.mark.parametrize("actor,action,subject,details", [
    ({"uid": 1, "user": "a"}, "job.submit", "", {}),
    ({"uid": True, "user": "a", "pid": 1}, "job.submit", "", {}),
    (ALICE, "Job Submit", "", {}),
    (ALICE, "job.submit", 5, {}),
    (ALICE, "job.submit", "", {"x": float("nan")}),
    (ALICE, "job.submit", "", {"x": b"bytes"}),
    (ALICE, "job.submit", "", {"x": "y" * 20000}),
    (ALICE, "job.submit", "", ["not", "a", "dict"]),
])
async def test_malformed_appends_are_refused(tmp_path: Path, signing_key: Ed25519PrivateKey, actor: dict,
                                             action: str, subject: str, details: dict) -> None:
    log = await AuditLog.open(tmp_path / "a.db", signing_key, ORIGIN)
    with pytest.raises(ValueError):
        await log.append(actor, action, subject, details)  # type: ignore[arg-type]
    assert log.size == 1
    await log.close()


async def test_no_prompt_text_reaches_the_database(tmp_path: Path, signing_key: Ed25519PrivateKey) -> None:
    """What a submit records: the prompt's hash. The prompt's text is nowhere in the files."""
    prompt = "a very particular lighthouse at dusk, oil on canvas"
    log = await AuditLog.open(tmp_path / "a.db", signing_key, ORIGIN)
    digest = hashlib.sha256(prompt.encode()).hexdigest()
    await log.append(ALICE, "job.submit", "job-1", {"prompt_sha256": digest, "prompt_chars": len(prompt)})
    with pytest.raises(ValueError):
        await log.append(ALICE, "job.submit", "job-2", {"prompt": prompt})
    await log.export(tmp_path / "export")
    await log.close()
    blobs = b"".join(p.read_bytes() for p in tmp_path.rglob("*") if p.is_file())
    assert digest.encode() in blobs
    assert prompt.encode() not in blobs and b"lighthouse" not in blobs


async def test_tail_filters_and_pages(tmp_path: Path, signing_key: Ed25519PrivateKey) -> None:
    log = await build(tmp_path / "a.db", signing_key, 30)
    last = await log.tail(limit=5)
    assert [e["seq"] for e in last] == [26, 27, 28, 29, 30]
    assert [e["seq"] for e in await log.tail(limit=3, before_seq=26)] == [23, 24, 25]
    submits = await log.tail(limit=100, action="job.submit")
    assert submits and all(e["action"] == "job.submit" for e in submits)
    assert [e["seq"] for e in submits] == [i + 1 for i in range(30) if i % 5 == 0]
    by_bob = await log.tail(limit=100, actor="bob")
    assert [e["seq"] for e in by_bob] == [i + 1 for i in range(30) if i % 3 == 0]
    assert [e["seq"] for e in await log.tail(limit=100, actor=str(BOB["uid"]))] == [e["seq"] for e in by_bob]
    both = await log.tail(limit=100, action="job.submit", actor="bob")
    assert [e["seq"] for e in both] == [i + 1 for i in range(30) if i % 15 == 0]
    await log.close()


async def test_subscribers_see_committed_entries(tmp_path: Path, signing_key: Ed25519PrivateKey) -> None:
    log = await AuditLog.open(tmp_path / "a.db", signing_key, ORIGIN)
    seen: list[tuple[int, bool]] = []

    def on_entry(entry: dict) -> None:
        committed = any(row[0] == entry["seq"] for row in stored_rows(tmp_path / "a.db"))
        seen.append((entry["seq"], committed))

    unsubscribe = log.subscribe(on_entry)
    await asyncio.gather(*(log.append(*record(i)) for i in range(5)))
    unsubscribe()
    await log.append(*record(5))
    assert seen == [(i, True) for i in range(1, 6)]
    await log.close()


async def test_checkpoints_by_count_by_time_and_at_close(tmp_path: Path, signing_key: Ed25519PrivateKey) -> None:
    log = await build(tmp_path / "a.db", signing_key, 25, every=10)
    assert checkpoint_sizes(tmp_path / "a.db") == [1, 11, 21]
    await log.close()
    assert checkpoint_sizes(tmp_path / "a.db") == [1, 11, 21, 26]
    log = await AuditLog.open(tmp_path / "a.db", signing_key, ORIGIN, checkpoint_every_entries=1000,
                              checkpoint_every_seconds=0.2)
    await log.append(*record(0))
    for _ in range(50):
        if 27 in checkpoint_sizes(tmp_path / "a.db"):
            break
        await asyncio.sleep(0.05)
    assert checkpoint_sizes(tmp_path / "a.db")[-1] == 27
    await log.append(*record(1))  # the timer is armed again for the next idle spell
    for _ in range(50):
        if 28 in checkpoint_sizes(tmp_path / "a.db"):
            break
        await asyncio.sleep(0.05)
    assert checkpoint_sizes(tmp_path / "a.db")[-1] == 28
    await log.close()


async def test_checkpoint_text_is_a_c2sp_signed_note(tmp_path: Path, signing_key: Ed25519PrivateKey) -> None:
    log = await build(tmp_path / "a.db", signing_key, 6)
    note = await log.checkpoint()
    assert await log.latest_checkpoint() == note
    lines = note.split("\n")
    assert lines[0] == ORIGIN and lines[1] == "7" and lines[3] == "" and lines[5] == ""
    proof = await log.proof(0)
    assert base64.b64decode(lines[2]).hex() == proof["root_hash"]
    dash, name, blob = lines[4].split(" ")
    assert dash == "\u2014" and name == ORIGIN
    raw = base64.b64decode(blob)
    pub = signing_key.public_key().public_bytes_raw()
    assert raw[:4] == hashlib.sha256(ORIGIN.encode() + b"\n\x01" + pub).digest()[:4]
    signing_key.public_key().verify(raw[4:], "\n".join(lines[:3]).encode() + b"\n")
    assert await log.checkpoint() == note  # nothing new: the same checkpoint
    await log.close()


async def test_proofs_verify_against_checkpoints(tmp_path: Path, signing_key: Ed25519PrivateKey) -> None:
    log = await build(tmp_path / "a.db", signing_key, 40, every=7)
    with sqlite3.connect(str(tmp_path / "a.db")) as conn:
        notes = dict(conn.execute("SELECT tree_size, note FROM audit_checkpoints"))
    pub = signing_key.public_key().public_bytes_raw()
    for size, note in notes.items():
        cp, _ = cpmod.verify(note, [pub])
        for index in {0, size // 2, size - 1}:
            p = await log.proof(index, size)
            assert p["root_hash"] == cp.root.hex()
            assert merkle.verify_inclusion(index, size, bytes.fromhex(p["leaf_hash"]),
                                           [bytes.fromhex(h) for h in p["hashes"]], cp.root)
    sizes = sorted(notes)
    for first in sizes:
        c = await log.consistency(first)
        assert c["second"] == log.size and c["first_root"] == cpmod.parse(notes[first]).root.hex()
        assert merkle.verify_consistency(first, c["second"], bytes.fromhex(c["first_root"]),
                                         bytes.fromhex(c["second_root"]), [bytes.fromhex(h) for h in c["hashes"]])
    with pytest.raises(ValueError):
        await log.proof(41)
    with pytest.raises(ValueError):
        await log.proof(3, 2)
    with pytest.raises(ValueError):
        await log.consistency(0)
    with pytest.raises(ValueError):
        await log.consistency(5, 500)
    await log.close()


async def test_reopen_continues_the_same_tree(tmp_path: Path, signing_key: Ed25519PrivateKey) -> None:
    log = await build(tmp_path / "a.db", signing_key, 13)
    before = await log.proof(0)
    await log.close()
    log = await AuditLog.open(tmp_path / "a.db", signing_key, "another-name")
    assert log.origin == ORIGIN and log.size == 14  # the origin is fixed when the log is created
    assert (await log.proof(0, 14))["root_hash"] == before["root_hash"]
    entry = await log.append(*record(99))
    assert entry["seq"] == 14
    c = await log.consistency(14)
    assert c["first_root"] == before["root_hash"]
    assert merkle.verify_consistency(14, 15, bytes.fromhex(c["first_root"]), bytes.fromhex(c["second_root"]),
                                     [bytes.fromhex(h) for h in c["hashes"]])
    assert (await log.verify(deep=True))["ok"]
    await log.close()
    with pytest.raises(AuditClosed):
        await log.append(*record(0))


async def test_key_rotation_is_announced_by_the_old_key(tmp_path: Path, signing_key: Ed25519PrivateKey) -> None:
    path = tmp_path / "a.db"
    log = await build(path, signing_key, 12, every=5)
    new_key = Ed25519PrivateKey.generate()
    announced = await log.rotate_signing_key(new_key, ALICE)
    after = [await log.append(*record(i)) for i in range(12, 20)]
    await log.close()
    old_kid = announced["key_id"]
    assert announced["action"] == "audit.key_rotate" and announced["details"]["old_key_id"] == old_kid
    new_raw = new_key.public_key().public_bytes_raw()
    assert base64.b64decode(announced["details"]["new_public_key"]) == new_raw
    signing_key.public_key().verify(bytes.fromhex(announced["signature"]), bytes.fromhex(announced["leaf_hash"]))
    assert all(e["key_id"] == announced["details"]["new_key_id"] for e in after)
    for e in after:
        new_key.public_key().verify(bytes.fromhex(e["signature"]), bytes.fromhex(e["leaf_hash"]))
    with sqlite3.connect(str(path)) as conn:
        notes = dict(conn.execute("SELECT tree_size, note FROM audit_checkpoints"))
    cpmod.verify(notes[announced["seq"] + 1], [signing_key.public_key().public_bytes_raw()])  # old key seals it
    cpmod.verify(notes[max(notes)], [new_raw])
    for deep in (False, True):
        assert await _verify(path, deep=deep) == {"ok": True, "size": 22, "first_bad": None, "reason": None}
    with pytest.raises(AuditKeyMismatch):
        await AuditLog.open(path, signing_key, ORIGIN)
    log = await AuditLog.open(path, new_key, ORIGIN)
    await log.append(*record(1))
    await log.close()
    assert (await _verify(path, deep=True))["ok"]


async def test_interrupted_rotation_is_finished_with_the_previous_key(tmp_path: Path,
                                                                      signing_key: Ed25519PrivateKey) -> None:
    path = tmp_path / "a.db"
    await (await build(path, signing_key, 3)).close()
    new_key = Ed25519PrivateKey.generate()
    log = await AuditLog.open(path, new_key, ORIGIN, previous_key=signing_key)
    assert [e["action"] for e in await log.tail(limit=1)] == ["audit.key_rotate"]
    await log.append(*record(4))
    await log.close()
    assert (await _verify(path, deep=True))["ok"]


async def test_export_verifies_on_its_own(tmp_path: Path, signing_key: Ed25519PrivateKey) -> None:
    from daemon.audit.chain import Pin
    from daemon.audit.verify import verify_export

    log = await build(tmp_path / "a.db", signing_key, 30, every=8)
    saved = await log.checkpoint()
    new_key = Ed25519PrivateKey.generate()
    await log.rotate_signing_key(new_key, BOB)
    await log.append(*record(31))
    manifest = await log.export(tmp_path / "out")
    await log.close()
    out = tmp_path / "out"
    assert manifest["entries"] == 33 and len(manifest["keys"]) == 2
    assert sorted(p.name for p in out.iterdir()) == ["checkpoints", "entries.jsonl", "keys", "manifest.json"]
    assert len((out / "entries.jsonl").read_text().splitlines()) == 33
    assert all(p.read_text().startswith("-----BEGIN PUBLIC KEY-----") for p in (out / "keys").iterdir())
    ok = {"ok": True, "size": 33, "first_bad": None, "reason": None}
    assert verify_export(out) == ok
    assert verify_export(out, deep=True) == ok
    assert verify_export(out, against=saved) == ok
    assert verify_export(out, pin=Pin(signing_key.public_key().public_bytes_raw(), "the first key")) == ok
    later = verify_export(out, pin=Pin(new_key.public_key().public_bytes_raw(), "the rotated-to key"))
    assert not later["ok"] and later["first_bad"] == 0 and "pinned by the rotated-to key" in later["reason"]
    stranger = Ed25519PrivateKey.generate().public_key().public_bytes_raw()
    assert not verify_export(out, pin=Pin(stranger, "a stranger"))["ok"]
    with pytest.raises(FileExistsError):
        log = await AuditLog.open(tmp_path / "a.db", new_key, ORIGIN)
        try:
            await log.export(out)
        finally:
            await log.close()


async def test_deep_verify_in_a_process_pool(tmp_path: Path, signing_key: Ed25519PrivateKey,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    """The pool path of --deep (big logs) finds the same first bad signature as the inline path."""
    from daemon.audit import parallel
    from daemon.audit import verify as verify_mod

    path = tmp_path / "a.db"
    log = await AuditLog.open(path, signing_key, ORIGIN, checkpoint_every_entries=100)
    await asyncio.gather(*(log.append(*record(i)) for i in range(400)))
    await log.close()
    monkeypatch.setattr(verify_mod, "POOL_MIN_ENTRIES", 1)
    monkeypatch.setattr(parallel, "SIGNATURE_BATCH", 64)
    assert (await _verify(path, deep=True, workers=2))["ok"]
    with sqlite3.connect(str(path)) as conn:
        sig = conn.execute("SELECT signature FROM audit_entries WHERE seq = 300").fetchone()[0]
        conn.execute("UPDATE audit_entries SET signature = ? WHERE seq = 77", (sig,))
    result = await _verify(path, deep=True, workers=2)
    assert result["first_bad"] == 77 and not result["ok"]


async def test_fast_verify_hashes_chunks_in_a_process_pool(tmp_path: Path, signing_key: Ed25519PrivateKey,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    """The pool path of the fast check (big logs), with small chunks so that a small log uses it."""
    from daemon.audit import verify as verify_mod

    path = tmp_path / "a.db"
    log = await AuditLog.open(path, signing_key, ORIGIN, checkpoint_every_entries=50)
    await asyncio.gather(*(log.append(*record(i)) for i in range(300)))
    await log.rotate_signing_key(Ed25519PrivateKey.generate(), ALICE)
    await asyncio.gather(*(log.append(*record(i)) for i in range(300)))
    await log.close()
    monkeypatch.setattr(verify_mod, "CHUNK_LEVEL", 5)
    monkeypatch.setattr(verify_mod, "CHUNK", 32)
    monkeypatch.setattr(verify_mod, "PARALLEL_FAST_MIN", 1)
    assert (await _verify(path, workers=2)) == {"ok": True, "size": 602, "first_bad": None, "reason": None}
    with sqlite3.connect(str(path)) as conn:  # 77: consistent leaf, so only its signature can tell
        text = conn.execute("SELECT entry FROM audit_entries WHERE seq = 77").fetchone()[0].replace("job-", "jab-")
        conn.execute("UPDATE audit_entries SET entry = ?, leaf_hash = ? WHERE seq = 77",
                     (text, hashlib.sha256(b"\x00" + text.encode()).digest()))
        text = conn.execute("SELECT entry FROM audit_entries WHERE seq = 500").fetchone()[0].replace("job-", "jab-")
        conn.execute("UPDATE audit_entries SET entry = ? WHERE seq = 500", (text,))
    assert (await _verify(path, workers=2))["first_bad"] == 77
    with sqlite3.connect(str(path)) as conn:
        conn.execute("DELETE FROM audit_entries WHERE seq = 40")
    assert (await _verify(path, workers=2))["first_bad"] == 40
