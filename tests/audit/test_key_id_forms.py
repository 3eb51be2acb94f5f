"""One id for the signing key (issue 14 point 4): the audit log names it as the key store does,
`ed25519-<16 hex>`, and logs written when it named it by the 16 hex digits alone keep verifying:
in place, with the anchor, through `sai audit verify` and as an export.

The old logs are written by the real AuditLog with the old id rule put back in the writer, and
anchored by a Trust that named the key store's keys the old way."""

from __future__ import annotations

import asyncio
import hashlib
import json
from collections.abc import Callable
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from console.cli import main
from daemon.audit import anchor as anchor_module
from daemon.audit import writer
from daemon.audit.anchor import FILE_NAME, Trust
from daemon.audit.log import AuditLog
from daemon.audit.verify import verify_export
from daemon.crypto.keyid import canonical_key_id, same_key_id, signing_key_id
from daemon.crypto.keys import signing_kid_of
from tests.audit.audit_helpers import ALICE, ORIGIN, Served, build, record, sai


def bare_key_id(raw: bytes) -> str:
    """The audit log's key id before it took the key store's form."""
    return hashlib.sha256(raw).hexdigest()[:16]


def raw_of(key: Ed25519PrivateKey) -> bytes:
    return key.public_key().public_bytes_raw()


def trust(directory: Path, name: Callable[[bytes], str], *keys: Ed25519PrivateKey) -> Trust:
    """The daemon's anchor over a key store holding `keys`, its ids made by `name`."""
    raws = [raw_of(k) for k in keys]
    return Trust(directory / FILE_NAME, lambda: {name(raw): raw for raw in raws})


async def old_log(path: Path, first: Ed25519PrivateKey, second: Ed25519PrivateKey, monkeypatch: pytest.MonkeyPatch,
                  anchored: bool = False) -> None:
    """Entry 0, six entries, a rotation from `first` to `second` and three more, all naming keys by
    the bare digits, as the log wrote them before."""
    with monkeypatch.context() as old:
        for module in (writer, anchor_module):  # what writes ids into the log and the anchor
            old.setattr(module, "key_id", bare_key_id)
        kw = {"trust": trust(path.parent, bare_key_id, first, second)} if anchored else {}
        log = await build(path, first, 6, every=4, **kw)
        await log.rotate_signing_key(second, ALICE)
        for i in range(6, 9):
            await log.append(*record(i))
        await log.close()


def test_ids_compare_in_either_form() -> None:
    raw = raw_of(Ed25519PrivateKey.generate())
    bare = bare_key_id(raw)
    assert canonical_key_id(bare) == signing_key_id(raw) == "ed25519-" + bare
    assert same_key_id(bare, "ed25519-" + bare) and same_key_id("ed25519-" + bare, "ed25519-" + bare)
    assert not same_key_id(bare, "ed25519-" + "0" * 16) and not same_key_id(None, None)
    assert canonical_key_id("k1") == "k1"


async def test_an_old_log_verifies_and_goes_on_in_the_one_form(tmp_path: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "audit.db"
    first, second, third = (Ed25519PrivateKey.generate() for _ in range(3))
    await old_log(path, first, second, monkeypatch)
    log = await AuditLog.open(path, second, ORIGIN, checkpoint_every_entries=4)
    old = await log.tail(limit=100)
    assert {e["key_id"] for e in old} == {bare_key_id(raw_of(first)), bare_key_id(raw_of(second))}
    new = await log.append(*record(9))
    assert new["key_id"] == signing_kid_of(second.public_key())
    assert log.key_id == new["key_id"]
    rotation = await log.rotate_signing_key(third, ALICE)
    assert rotation["key_id"] == rotation["details"]["old_key_id"] == signing_kid_of(second.public_key())
    assert rotation["details"]["new_key_id"] == signing_kid_of(third.public_key())
    assert (await log.append(*record(10)))["key_id"] == signing_kid_of(third.public_key())
    for deep in (False, True):
        outcome = await log.verify(deep=deep)
        assert outcome["ok"], outcome
    await log.close()


async def test_an_old_anchored_log_opens_under_the_key_stores_ids(tmp_path: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "audit.db"
    first, second = Ed25519PrivateKey.generate(), Ed25519PrivateKey.generate()
    await old_log(path, first, second, monkeypatch, anchored=True)
    assert json.loads((tmp_path / FILE_NAME).read_text())["first_key_id"] == bare_key_id(raw_of(first))
    anchor = trust(tmp_path, signing_key_id, first, second)
    log = await AuditLog.open(path, second, ORIGIN, trust=anchor)
    assert (await log.append(*record(9)))["key_id"] == signing_kid_of(second.public_key())
    outcome = await log.verify(deep=True)
    assert outcome["ok"], outcome
    await log.checkpoint()
    await log.close()
    assert anchor.status()["first_key_id"] == signing_kid_of(first.public_key())
    again = await AuditLog.open(path, second, ORIGIN, trust=anchor)
    assert (await again.verify())["ok"]
    await again.close()


def test_sai_audit_verify_and_the_export_of_an_old_log(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                       capsys: pytest.CaptureFixture[str]) -> None:
    db = tmp_path / "audit.db"
    first, second = Ed25519PrivateKey.generate(), Ed25519PrivateKey.generate()
    asyncio.run(old_log(db, first, second, monkeypatch))
    served = Served(db, second)  # appends 20 entries in the one form
    target = tmp_path / "export"
    try:
        assert sai(served, "verify") == 0
        assert capsys.readouterr().out.startswith("ok: the audit log verified, 31 entries")
        assert sai(served, "verify", "--deep") == 0
        capsys.readouterr()
        assert sai(served, "export", str(target)) == 0
        capsys.readouterr()
    finally:
        served.stop()
    names = sorted(p.stem for p in (target / "keys").iterdir())
    assert names == sorted(signing_kid_of(k.public_key()) for k in (first, second))
    assert json.loads((target / "manifest.json").read_text())["keys"] == [signing_kid_of(first.public_key()),
                                                                        signing_kid_of(second.public_key())]
    entries = [json.loads(line) for line in (target / "entries.jsonl").read_text().splitlines()]
    assert entries[0]["key_id"] == bare_key_id(raw_of(first))
    assert entries[-1]["key_id"] == signing_kid_of(second.public_key())
    assert main(["audit", "verify-export", "--deep", str(target)]) == 0
    assert "ok: the export" in capsys.readouterr().out
    pem = target / "keys" / f"{signing_kid_of(first.public_key())}.pem"
    assert main(["audit", "verify-export", "--key", str(pem), str(target)]) == 0
    assert verify_export(target)["ok"]
