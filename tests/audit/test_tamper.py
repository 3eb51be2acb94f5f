"""Tampering with a closed log (and with an export) is detected, naming the first bad entry.

The template log has entries 0..45 and checkpoints at sizes 1, 11, 21, 31, 41 and 46. Entry 23 is
covered by checkpoints; "tail" tests drop checkpoint 46 (as a crash before shutdown would) so
that entries 41..45 are covered by nothing but their own signatures.
"""

from __future__ import annotations

import base64
import hashlib
import json
import sqlite3
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from daemon.audit.entry import canonical_json, entry_bytes
from daemon.audit.log import AuditLog
from daemon.audit.verify import verify_db, verify_export
from tests.audit.audit_helpers import ORIGIN, build, record, writable

COVERED, TAIL = 23, 43


def check(path: Path, first_bad: int, modes: tuple[bool, ...] = (False, True), against: str | None = None) -> None:
    for deep in modes:
        result = verify_db(path, deep=deep, against=against)
        assert not result["ok"] and result["first_bad"] == first_bad, (deep, result)
        assert result["reason"]


def drop_last_checkpoint(conn: sqlite3.Connection) -> None:
    conn.execute("DELETE FROM audit_checkpoints WHERE tree_size = 46")


def text_of(conn: sqlite3.Connection, seq: int) -> bytes:
    return conn.execute("SELECT CAST(entry AS BLOB) FROM audit_entries WHERE seq = ?", (seq,)).fetchone()[0]


def put(conn: sqlite3.Connection, seq: int, data: bytes, rehash: bool = False) -> None:
    conn.execute("UPDATE audit_entries SET entry = CAST(? AS TEXT) WHERE seq = ?", (data, seq))
    if rehash:
        conn.execute("UPDATE audit_entries SET leaf_hash = ? WHERE seq = ?",
                     (hashlib.sha256(b"\x00" + data).digest(), seq))


def test_the_template_verifies(template_log: Path, log_copy: Path) -> None:
    for deep in (False, True):
        assert verify_db(template_log, deep=deep) == {"ok": True, "size": 46, "first_bad": None, "reason": None}
    with writable(log_copy) as conn:
        drop_last_checkpoint(conn)
    assert verify_db(log_copy)["ok"]


@pytest.mark.parametrize("seq", [0, COVERED, TAIL])
def test_a_changed_byte_anywhere_in_an_entry(log_copy: Path, seq: int) -> None:
    """Every byte of the entry, one at a time; the verifier must name this entry each time."""
    conn = writable(log_copy)
    conn.execute("PRAGMA synchronous=OFF")
    if seq >= 41:
        drop_last_checkpoint(conn)
    original = text_of(conn, seq)
    for offset in range(len(original)):
        changed = bytearray(original)
        changed[offset] ^= 0x01
        put(conn, seq, bytes(changed))
        result = verify_db(log_copy)
        assert result["first_bad"] == seq, (offset, chr(original[offset]), result)
    put(conn, seq, original)
    assert verify_db(log_copy)["ok"]
    conn.close()


MUTATIONS: dict[str, Callable[[dict[str, Any]], None]] = {
    "action": lambda e: e.update(action="job.cancel" if e["action"] != "job.cancel" else "job.start"),
    "actor.uid": lambda e: e["actor"].update(uid=e["actor"]["uid"] + 1),
    "actor.user": lambda e: e["actor"].update(user="mallory"),
    "actor.pid": lambda e: e["actor"].update(pid=e["actor"]["pid"] + 1),
    "subject": lambda e: e.update(subject="job-9999"),
    "details": lambda e: e["details"].update(n=e["details"]["n"] + 1),
    "time": lambda e: e.update(time=e["time"].replace("Z", "1Z")),
    "key_id": lambda e: e.update(key_id="0" * 16),
    "seq": lambda e: e.update(seq=e["seq"] + 1),
}


@pytest.mark.parametrize("field", sorted(MUTATIONS))
@pytest.mark.parametrize("seq", [COVERED, TAIL])
@pytest.mark.parametrize("rehash", [False, True], ids=["leaf-stale", "leaf-recomputed"])
def test_a_changed_field(log_copy: Path, field: str, seq: int, rehash: bool) -> None:
    """Each field edited as valid canonical JSON, with the stored leaf hash left or recomputed."""
    with writable(log_copy) as conn:
        if seq >= 41:
            drop_last_checkpoint(conn)
        entry = json.loads(text_of(conn, seq))
        MUTATIONS[field](entry)
        put(conn, seq, canonical_json(entry).encode(), rehash=rehash)
    check(log_copy, seq)


@pytest.mark.parametrize("seq", [COVERED, TAIL])
def test_a_changed_leaf_hash(log_copy: Path, seq: int) -> None:
    with writable(log_copy) as conn:
        if seq >= 41:
            drop_last_checkpoint(conn)
        leaf = bytearray(conn.execute("SELECT leaf_hash FROM audit_entries WHERE seq = ?", (seq,)).fetchone()[0])
        leaf[7] ^= 0x80
        conn.execute("UPDATE audit_entries SET leaf_hash = ? WHERE seq = ?", (bytes(leaf), seq))
    check(log_copy, seq)


@pytest.mark.parametrize("how", ["flipped-byte", "another-entrys", "another-keys"])
@pytest.mark.parametrize("seq", [COVERED, TAIL])
def test_a_replaced_signature(log_copy: Path, seq: int, how: str) -> None:
    """--deep checks every signature. Without it, an entry under a valid checkpoint is proven by
    the checkpoint's signature over the tree, so only uncovered (tail) entries' own ones are read."""
    with writable(log_copy) as conn:
        if seq >= 41:
            drop_last_checkpoint(conn)
        sig, leaf = conn.execute("SELECT signature, leaf_hash FROM audit_entries WHERE seq = ?", (seq,)).fetchone()
        if how == "flipped-byte":
            new = bytes([sig[0] ^ 1]) + sig[1:]
        elif how == "another-entrys":
            new = conn.execute("SELECT signature FROM audit_entries WHERE seq = 5").fetchone()[0]
        else:
            new = Ed25519PrivateKey.generate().sign(leaf)
        conn.execute("UPDATE audit_entries SET signature = ? WHERE seq = ?", (new, seq))
    check(log_copy, seq, modes=(False, True) if seq == TAIL else (True,))


@pytest.mark.parametrize("seq", [COVERED, TAIL])
@pytest.mark.parametrize("renumber", [False, True], ids=["gap", "renumbered"])
def test_a_deleted_entry(log_copy: Path, seq: int, renumber: bool) -> None:
    with writable(log_copy) as conn:
        if seq >= 41:
            drop_last_checkpoint(conn)
        conn.execute("DELETE FROM audit_entries WHERE seq = ?", (seq,))
        if renumber:
            conn.execute("UPDATE audit_entries SET seq = -(seq - 1) WHERE seq > ?", (seq,))
            conn.execute("UPDATE audit_entries SET seq = -seq WHERE seq < 0")
    check(log_copy, seq)


@pytest.mark.parametrize("seq", [COVERED, TAIL])
def test_two_entries_swapped(log_copy: Path, seq: int) -> None:
    with writable(log_copy) as conn:
        if seq >= 41:
            drop_last_checkpoint(conn)
        conn.execute("UPDATE audit_entries SET seq = -1 WHERE seq = ?", (seq,))
        conn.execute("UPDATE audit_entries SET seq = ? WHERE seq = ?", (seq, seq + 1))
        conn.execute("UPDATE audit_entries SET seq = ? WHERE seq = -1", (seq + 1,))
    check(log_copy, seq)


def forged(conn: sqlite3.Connection, seq: int) -> tuple[int, str, bytes, bytes]:
    """An entry as an attacker would write it: right format and key id, consistent leaf hash,
    signed with a key the log never announced (the real key is not theirs)."""
    kid = json.loads(text_of(conn, 1))["key_id"]
    actor, _, _, details = record(0)
    data = entry_bytes(seq, "2025-01-01T00:00:00.000000Z", actor, "queue.pause", "", canonical_json(details), kid)
    leaf = hashlib.sha256(b"\x00" + data).digest()
    return seq, data.decode(), leaf, Ed25519PrivateKey.generate().sign(leaf)


@pytest.mark.parametrize("seq", [COVERED, TAIL, 46])
def test_an_inserted_forged_entry(log_copy: Path, seq: int) -> None:
    with writable(log_copy) as conn:
        if seq >= 41:
            drop_last_checkpoint(conn)
        conn.execute("UPDATE audit_entries SET seq = -(seq + 1) WHERE seq >= ?", (seq,))
        conn.execute("UPDATE audit_entries SET seq = -seq WHERE seq < 0")
        conn.execute("INSERT INTO audit_entries VALUES (?, ?, ?, ?)", forged(conn, seq))
    check(log_copy, seq)


def _edit_checkpoint(conn: sqlite3.Connection, size: int, edit: Callable[[str], str]) -> None:
    note = conn.execute("SELECT note FROM audit_checkpoints WHERE tree_size = ?", (size,)).fetchone()[0]
    conn.execute("UPDATE audit_checkpoints SET note = ? WHERE tree_size = ?", (edit(note), size))


def _new_root(note: str) -> str:
    lines = note.split("\n")
    lines[2] = base64.b64encode(hashlib.sha256(b"another tree").digest()).decode()
    return "\n".join(lines)


def _new_size(note: str) -> str:
    lines = note.split("\n")
    lines[1] = str(int(lines[1]) + 1)
    return "\n".join(lines)


def _resigned(note: str) -> str:
    """Body kept, signature line replaced by one from a key the log does not have."""
    from daemon.audit import checkpoint as cpmod

    cp = cpmod.parse(note)
    return cpmod.sign(cp.origin, cp.size, cp.root, Ed25519PrivateKey.generate())


@pytest.mark.parametrize("edit", [_new_root, _new_size, _resigned, lambda n: n.replace("\u2014", "-")],
                         ids=["root", "size", "other-key", "mangled"])
def test_an_edited_checkpoint(log_copy: Path, edit: Callable[[str], str]) -> None:
    """A checkpoint that does not verify, over entries that all do, is named by its last entry."""
    with writable(log_copy) as conn:
        _edit_checkpoint(conn, 21, edit)
    check(log_copy, 20)


def test_a_truncated_tail_against_a_saved_checkpoint(log_copy: Path) -> None:
    with sqlite3.connect(str(log_copy)) as conn:
        saved = conn.execute("SELECT note FROM audit_checkpoints WHERE tree_size = 46").fetchone()[0]
    assert verify_db(log_copy, against=saved)["ok"]
    with writable(log_copy) as conn:
        conn.execute("DELETE FROM audit_entries WHERE seq >= 30")
        conn.execute("DELETE FROM audit_checkpoints WHERE tree_size > 30")
    assert verify_db(log_copy)["ok"]  # on its own the cut log is consistent: this is what --against is for
    check(log_copy, 30, against=saved)
    assert "missing" in verify_db(log_copy, against=saved)["reason"]


async def test_a_truncated_then_extended_log_fails_against_the_saved_checkpoint(
        log_copy: Path, signing_key: Ed25519PrivateKey) -> None:
    with sqlite3.connect(str(log_copy)) as conn:
        saved = conn.execute("SELECT note FROM audit_checkpoints WHERE tree_size = 46").fetchone()[0]
    with writable(log_copy) as conn:
        conn.execute("DELETE FROM audit_entries WHERE seq >= 30")
        conn.execute("DELETE FROM audit_checkpoints WHERE tree_size > 30")
    log = await AuditLog.open(log_copy, signing_key, ORIGIN)
    for i in range(20):
        await log.append(*record(100 + i))
    assert (await log.verify())["ok"]
    result = await log.verify(against=saved)
    await log.close()
    assert not result["ok"] and result["first_bad"] is not None and result["first_bad"] <= 45


def test_a_checkpoint_from_another_log_is_refused(log_copy: Path, tmp_path: Path) -> None:
    from daemon.audit import checkpoint as cpmod

    foreign = cpmod.sign(ORIGIN, 12, hashlib.sha256(b"x").digest(), Ed25519PrivateKey.generate())
    result = verify_db(log_copy, against=foreign)
    assert not result["ok"] and "checkpoint" in result["reason"]
    result = verify_db(log_copy, against="not a checkpoint")
    assert not result["ok"] and result["first_bad"] is None


async def test_live_verify_names_the_first_bad_entry(log_copy: Path, signing_key: Ed25519PrivateKey) -> None:
    with writable(log_copy) as conn:
        put(conn, 31, text_of(conn, 31).replace(b"job-", b"jab-"), rehash=True)
        put(conn, 35, text_of(conn, 35).replace(b"job-", b"jab-"))
    log = await AuditLog.open(log_copy, signing_key, ORIGIN)
    assert (await log.verify())["first_bad"] == 31
    assert (await log.verify(deep=True))["first_bad"] == 31
    await log.close()


def test_a_damaged_tree_node_is_found_by_deep(log_copy: Path) -> None:
    with writable(log_copy) as conn:
        conn.execute("UPDATE audit_nodes SET hash = ? WHERE level = 2 AND idx = 3", (bytes(32),))
    assert verify_db(log_copy)["ok"]  # proofs come from these nodes; the fast path rebuilds the tree
    check(log_copy, 12, modes=(True,))


async def test_rotation_cannot_be_forged_or_dropped(tmp_path: Path, signing_key: Ed25519PrivateKey) -> None:
    path = tmp_path / "a.db"
    log = await build(path, signing_key, 12, every=5)
    rotation = await log.rotate_signing_key(Ed25519PrivateKey.generate(), record(0)[0])
    for i in range(8):
        await log.append(*record(i))
    await log.close()
    r = rotation["seq"]
    assert verify_db(path, deep=True)["ok"]
    copy = tmp_path / "forged.db"
    copy.write_bytes(path.read_bytes())
    attacker = Ed25519PrivateKey.generate().public_key().public_bytes_raw()
    with writable(copy) as conn:
        entry = json.loads(text_of(conn, r))
        entry["details"]["new_public_key"] = base64.b64encode(attacker).decode()
        put(conn, r, canonical_json(entry).encode(), rehash=True)
    check(copy, r)
    copy.write_bytes(path.read_bytes())
    with writable(copy) as conn:
        conn.execute("DELETE FROM audit_entries WHERE seq = ?", (r,))
        conn.execute("UPDATE audit_entries SET seq = -(seq - 1) WHERE seq > ?", (r,))
        conn.execute("UPDATE audit_entries SET seq = -seq WHERE seq < 0")
    check(copy, r)


@pytest.fixture
async def export_dir(log_copy: Path, signing_key: Ed25519PrivateKey, tmp_path: Path) -> Path:
    log = await AuditLog.open(log_copy, signing_key, ORIGIN)
    await log.export(tmp_path / "export")
    await log.close()
    assert verify_export(tmp_path / "export")["ok"]
    return tmp_path / "export"


def check_export(directory: Path, first_bad: int | None, modes: tuple[bool, ...] = (False, True)) -> None:
    for deep in modes:
        result = verify_export(directory, deep=deep)
        assert not result["ok"] and result["first_bad"] == first_bad, (deep, result)


@pytest.mark.parametrize("offset", [2, 40, 120, -180, -30], ids=["action", "actor", "details", "leaf", "signature"])
def test_export_changed_byte(export_dir: Path, offset: int) -> None:
    path = export_dir / "entries.jsonl"
    lines = path.read_bytes().splitlines(keepends=True)
    line = bytearray(lines[COVERED])
    line[offset if offset > 0 else len(line) + offset] ^= 0x01
    lines[COVERED] = bytes(line)
    path.write_bytes(b"".join(lines))
    check_export(export_dir, COVERED, modes=(True,) if offset == -30 else (False, True))


@pytest.mark.parametrize("edit", ["delete", "swap", "forge"])
def test_export_reordered_lines(export_dir: Path, edit: str) -> None:
    path = export_dir / "entries.jsonl"
    lines = path.read_text().splitlines(keepends=True)
    if edit == "delete":
        del lines[COVERED]
    elif edit == "swap":
        lines[COVERED], lines[COVERED + 1] = lines[COVERED + 1], lines[COVERED]
    else:
        seq, text, leaf, sig = forged(_mem_with(lines), COVERED)
        lines.insert(COVERED, f'{text[:-1]},"leaf_hash":"{leaf.hex()}","signature":"{sig.hex()}"}}\n')
    path.write_text("".join(lines))
    check_export(export_dir, COVERED)


def _mem_with(lines: list[str]) -> sqlite3.Connection:
    """A scratch table holding entry 1, so `forged` can copy its key id."""
    conn = sqlite3.connect(":memory:")
    conn.execute("CREATE TABLE audit_entries (seq INTEGER, entry TEXT)")
    conn.execute("INSERT INTO audit_entries VALUES (1, ?)", (json.dumps(json.loads(lines[1])),))
    return conn


def test_export_edited_checkpoint_and_missing_keys(export_dir: Path) -> None:
    cp = export_dir / "checkpoints" / f"{21:020d}.txt"
    original = cp.read_text()
    cp.write_text(_new_root(original))
    check_export(export_dir, 20)
    cp.write_text(original)
    for pem in (export_dir / "keys").iterdir():
        pem.unlink()
    check_export(export_dir, 0)
