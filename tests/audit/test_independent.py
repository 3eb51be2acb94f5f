"""A third party's check, written here from RFC 9162 section 2.1 and the C2SP signed-note and
tlog-checkpoint texts, sharing no code with daemon/.

The log is made by the real daemon code in a subprocess (an export, proofs and a checkpoint
written to a directory); this module never imports daemon.audit, so a bug shared between the
log and its own verifier cannot hide here.
"""

from __future__ import annotations

import ast
import base64
import hashlib
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

ROOT = Path(__file__).resolve().parents[2]

MAKE_LOG = r"""
import asyncio, json, sys
from pathlib import Path
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from daemon.audit.log import AuditLog

async def main(out: Path) -> None:
    actor = {"uid": 1000, "user": "alice", "pid": 4242}
    log = await AuditLog.open(out / "audit.db", Ed25519PrivateKey.generate(), "sai.example/box-1",
                              checkpoint_every_entries=9)
    for i in range(40):
        await log.append(actor, "job.submit", f"job-{i}", {"n": i, "prompt_sha256": f"{i:064x}", "w": "ü"})
    await log.rotate_signing_key(Ed25519PrivateKey.generate(), actor)
    for i in range(40, 52):
        await log.append(actor, "job.finish", f"job-{i}", {"n": i, "ratio": i / 3})
    size = log.size
    proofs = [await log.proof(i, s) for s, i in [(1, 0), (10, 9), (10, 3), (41, 40), (size, 0), (size, 29), (size, size - 1)]]
    cons = [await log.consistency(a, b) for a, b in [(1, 1), (1, 8), (6, 8), (10, 41), (13, size), (32, size)]]
    (out / "checkpoint.txt").write_text(await log.checkpoint())
    await log.export(out / "export")
    await log.close()
    (out / "proofs.json").write_text(json.dumps({"inclusion": proofs, "consistency": cons}))

asyncio.run(main(Path(sys.argv[1])))
"""


# --- RFC 9162, 2.1.1: the Merkle Tree Hash ------------------------------------------------

def sha256(data: bytes) -> bytes:
    return hashlib.sha256(data).digest()


def leaf(entry: bytes) -> bytes:
    return sha256(b"\x00" + entry)


def node(left: bytes, right: bytes) -> bytes:
    return sha256(b"\x01" + left + right)


def split(n: int) -> int:
    """k: the largest power of two smaller than n."""
    k = 1
    while k * 2 < n:
        k *= 2
    return k


def mth(leaves: list[bytes]) -> bytes:
    if not leaves:
        return sha256(b"")
    if len(leaves) == 1:
        return leaves[0]
    k = split(len(leaves))
    return node(mth(leaves[:k]), mth(leaves[k:]))


# --- RFC 9162, 2.1.3: inclusion, by unwinding the PATH(m, D[n]) recursion ----------------

def root_from_path(m: int, n: int, leaf_hash: bytes, path: list[bytes]) -> bytes:
    """PATH(m, D[n]) = PATH(m, D[0:k]) : MTH(D[k:n]) if m < k, else PATH(m-k, D[k:n]) : MTH(D[0:k])."""
    if n == 1:
        if path:
            raise ValueError("proof too long")
        return leaf_hash
    if not path:
        raise ValueError("proof too short")
    k = split(n)
    *rest, sibling = path
    if m < k:
        return node(root_from_path(m, k, leaf_hash, rest), sibling)
    return node(sibling, root_from_path(m - k, n - k, leaf_hash, rest))


# --- RFC 9162, 2.1.4: consistency, by unwinding SUBPROOF(m, D[n], b) -----------------------

def roots_from_consistency(m: int, n: int, proof: list[bytes], b: bool, old_root: bytes) -> tuple[bytes, bytes]:
    """(hash of the old tree's part of this range, hash of the range in the new tree)."""
    if m == n:
        if b:  # SUBPROOF(m, D[m], true) = {}: this range is the whole old tree
            if proof:
                raise ValueError("proof too long")
            return old_root, old_root
        if len(proof) != 1:
            raise ValueError("proof has the wrong length")
        return proof[0], proof[0]
    if not proof:
        raise ValueError("proof too short")
    k = split(n)
    *rest, sibling = proof
    if m <= k:
        old, new = roots_from_consistency(m, k, rest, b, old_root)
        return old, node(new, sibling)
    old, new = roots_from_consistency(m - k, n - k, rest, False, old_root)
    return node(sibling, old), node(sibling, new)


def consistent(m: int, n: int, old_root: bytes, new_root: bytes, proof: list[bytes]) -> bool:
    try:
        old, new = roots_from_consistency(m, n, proof, True, old_root)
    except ValueError:
        return False
    return old == old_root and new == new_root


# --- C2SP signed-note and tlog-checkpoint ----------------------------------------------------

def note_key_id(name: str, public_key: bytes) -> bytes:
    """key ID = SHA-256(key name || 0x0A || signature type (0x01: Ed25519) || public key)[:4]."""
    return sha256(name.encode() + b"\x0a" + b"\x01" + public_key)[:4]


def open_checkpoint(note: str, name: str, keys: list[bytes]) -> tuple[str, int, bytes]:
    """Verify a signed note with a trusted key named `name`; return (origin, tree size, root)."""
    text, _, signatures = note.rpartition("\n\n")
    text += "\n"  # the signed text includes its final newline
    for line in signatures.rstrip("\n").split("\n"):
        assert line.startswith("\u2014 ")
        sig_name, blob = line[2:].split(" ")
        raw = base64.b64decode(blob)
        for key in keys:
            if sig_name == name and raw[:4] == note_key_id(name, key):
                Ed25519PublicKey.from_public_bytes(key).verify(raw[4:], text.encode())  # raises if bad
                origin, size, root = text.split("\n")[:3]
                return origin, int(size), base64.b64decode(root)
    raise InvalidSignature("no signature by a trusted key")


# --- the export ---------------------------------------------------------------------------------

def read_export(directory: Path) -> tuple[dict[str, Any], list[bytes], list[dict[str, Any]], dict[str, bytes]]:
    manifest = json.loads((directory / "manifest.json").read_text())
    entries, raw_entries = [], []
    for line in (directory / "entries.jsonl").read_text(encoding="utf-8").splitlines():
        obj = json.loads(line)
        leaf_hex, sig_hex = obj.pop("leaf_hash"), obj.pop("signature")
        data = json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()
        raw_entries.append(data)
        entries.append({"entry": obj, "leaf": bytes.fromhex(leaf_hex), "sig": bytes.fromhex(sig_hex)})
    keys = {}
    for pem in (directory / "keys").glob("*.pem"):
        key = serialization.load_pem_public_key(pem.read_bytes())
        assert isinstance(key, Ed25519PublicKey)
        keys[pem.stem] = key.public_bytes_raw()
    return manifest, raw_entries, entries, keys


@pytest.fixture(scope="module")
def made(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("independent")
    subprocess.run([sys.executable, "-c", MAKE_LOG, str(out)], cwd=ROOT, check=True, timeout=120)
    return out


def test_this_file_does_not_import_the_daemon() -> None:
    tree = ast.parse(Path(__file__).read_text())
    modules = [a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names]
    modules += [n.module or "" for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)]
    assert modules and not [m for m in modules if m.split(".")[0] in ("daemon", "console")]


def test_checkpoints_sign_the_tree_of_the_exported_entries(made: Path) -> None:
    manifest, raw_entries, entries, keys = read_export(made / "export")
    leaves = [leaf(data) for data in raw_entries]
    assert [e["leaf"] for e in entries] == leaves
    notes = sorted((made / "export" / "checkpoints").glob("*.txt"))
    assert len(notes) >= 6
    for path in notes:
        origin, size, root = open_checkpoint(path.read_text(), manifest["origin"], list(keys.values()))
        assert origin == "sai.example/box-1" and size == int(path.stem)
        assert root == mth(leaves[:size])
    origin, size, root = open_checkpoint((made / "checkpoint.txt").read_text(), origin, list(keys.values()))
    assert size == len(leaves) and root == mth(leaves)


def test_every_entry_is_signed_by_the_key_it_names(made: Path) -> None:
    _, _, entries, keys = read_export(made / "export")
    assert len(keys) == 2
    for i, e in enumerate(entries):
        assert e["entry"]["seq"] == i
        Ed25519PublicKey.from_public_bytes(keys[e["entry"]["key_id"]]).verify(e["sig"], e["leaf"])
    rotation = next(e["entry"] for e in entries if e["entry"]["action"] == "audit.key_rotate")
    assert rotation["key_id"] == rotation["details"]["old_key_id"] != rotation["details"]["new_key_id"]
    assert base64.b64decode(rotation["details"]["new_public_key"]) == keys[rotation["details"]["new_key_id"]]


def test_inclusion_proofs(made: Path) -> None:
    _, raw_entries, _, _ = read_export(made / "export")
    leaves = [leaf(data) for data in raw_entries]
    for p in json.loads((made / "proofs.json").read_text())["inclusion"]:
        m, n = p["index"], p["tree_size"]
        path = [bytes.fromhex(h) for h in p["hashes"]]
        assert bytes.fromhex(p["leaf_hash"]) == leaves[m]
        assert bytes.fromhex(p["root_hash"]) == mth(leaves[:n])
        assert root_from_path(m, n, leaves[m], path) == mth(leaves[:n])
        if path:
            bad = list(path)
            bad[0] = sha256(bad[0])
            assert root_from_path(m, n, leaves[m], bad) != mth(leaves[:n])


def test_consistency_proofs(made: Path) -> None:
    _, raw_entries, _, _ = read_export(made / "export")
    leaves = [leaf(data) for data in raw_entries]
    for c in json.loads((made / "proofs.json").read_text())["consistency"]:
        m, n = c["first"], c["second"]
        proof = [bytes.fromhex(h) for h in c["hashes"]]
        assert bytes.fromhex(c["first_root"]) == mth(leaves[:m])
        assert bytes.fromhex(c["second_root"]) == mth(leaves[:n])
        assert consistent(m, n, mth(leaves[:m]), mth(leaves[:n]), proof)
        if proof:
            assert not consistent(m, n, mth(leaves[:m]), mth(leaves[:n]), proof[:-1] + [sha256(b"x")])
        assert not consistent(m, n, sha256(b"another old tree"), mth(leaves[:n]), proof)


def test_an_edited_checkpoint_does_not_open(made: Path) -> None:
    manifest, _, _, keys = read_export(made / "export")
    note = (made / "checkpoint.txt").read_text()
    lines = note.split("\n")
    lines[1] = str(int(lines[1]) - 1)
    with pytest.raises(InvalidSignature):
        open_checkpoint("\n".join(lines), manifest["origin"], list(keys.values()))
