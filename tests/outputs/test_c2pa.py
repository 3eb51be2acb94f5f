"""C2PA Content Credentials in every output, read by c2pa's own Reader (offline, under `unshare -n`):
Trusted with the installation CA from `sai ca export` as anchor, Valid without it; a changed pixel or
manifest byte is caught; no prompt or user in the manifest; keys.rotate issues a new signing
certificate and earlier exports stay Trusted. Certificate creation, sealing and renewal below."""

from __future__ import annotations

import json
import os
import pwd
import secrets
import struct
import subprocess
import sys
import zlib
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from daemon import __version__
from daemon.crypto import KeyStoreError
from daemon.crypto.certs import Lifetimes
from daemon.crypto.keys import KeyStore
from daemon.outputs.credentials import ASSERTION, SOURCE_TYPE, Provenance, embed_credentials, read_credentials
from daemon.outputs.png import encode_png
from tests.harness import run_sai
from tests.outputs.out_helpers import synthetic

ROOT = Path(__file__).resolve().parents[2]


def read_offline(path: Path, anchors: Path | None = None) -> dict[str, Any]:
    """c2pa's Reader in a process with no network at all."""
    args = ["unshare", "-n", sys.executable, "-m", "tests.outputs.c2pa_read", str(path)]
    done = subprocess.run(args + ([str(anchors)] if anchors else []), capture_output=True, text=True, cwd=ROOT,
                          timeout=120)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def strings(value: Any) -> set[str]:
    """Every string (key or value) in a JSON document."""
    if isinstance(value, dict):
        return set(value) | {s for item in value.values() for s in strings(item)}
    if isinstance(value, list):
        return {s for item in value for s in strings(item)}
    return {value} if isinstance(value, str) else set()


def chunks(png: bytes) -> list[tuple[bytes, bytes]]:
    found, pos = [], 8
    while pos < len(png):
        (length,), kind = struct.unpack(">I", png[pos:pos + 4]), png[pos + 4:pos + 8]
        found.append((kind, png[pos + 8:pos + 8 + length]))
        pos += 12 + length
    return found


def assemble(parts: list[tuple[bytes, bytes]]) -> bytes:
    out = [b"\x89PNG\r\n\x1a\n"]
    for kind, data in parts:
        out.append(struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data)))
    return b"".join(out)


def change_last_pixel(png: bytes) -> bytes:
    """A valid PNG with one pixel of the last row changed (the `Up` filter carries it to no other row);
    every other chunk, the C2PA one included, byte for byte the same."""
    parts = chunks(png)
    idat = b"".join(data for kind, data in parts if kind == b"IDAT")
    raw = bytearray(zlib.decompress(idat))
    raw[-1] ^= 0x10
    rest = [(kind, data) for kind, data in parts if kind not in (b"IDAT", b"IEND")]
    return assemble([*rest, (b"IDAT", zlib.compress(bytes(raw))), (b"IEND", b"")])


def change_claim_byte(png: bytes) -> bytes:
    """One byte of the signed claim (the claim generator's name in it) changed; CRC fixed, so the PNG
    itself stays well formed."""
    parts = chunks(png)
    index = next(i for i, (kind, _) in enumerate(parts) if kind == b"caBX")
    box = bytearray(parts[index][1])
    at = box.index(b"Secure AI Studio")
    box[at] = ord("Z")
    parts[index] = (b"caBX", bytes(box))
    return assemble(parts)


async def test_exports_carry_content_credentials_a_third_party_can_check(make_daemon, client_of, wait_for,
                                                                          tmp_path: Path):
    daemon = make_daemon()
    client = await client_of(daemon)
    marker = secrets.token_hex(8)
    job_id = (await client.call("job.submit", prompt=f"a lighthouse {marker}", negative_prompt=f"fog {marker}",
                                count=2))["job_id"]
    job = await wait_for(client, job_id)
    assert job["state"] == "succeeded", job["error"]
    exported = tmp_path / "image.png"
    assert run_sai("export", job_id, "--index", "1", "-o", str(exported), socket_path=daemon.socket).returncode == 0
    anchor = tmp_path / "sai-ca.pem"
    out = run_sai("ca", "export", str(anchor), socket_path=daemon.socket)
    assert out.returncode == 0 and "wrote" in out.stdout, out.stderr
    assert anchor.read_text().startswith("-----BEGIN CERTIFICATE-----") and anchor.stat().st_mode & 0o777 == 0o644
    stdout = run_sai("ca", "export", socket_path=daemon.socket)
    assert stdout.returncode == 0 and stdout.stdout == anchor.read_text()

    trusted, untrusted = read_offline(exported, anchor), read_offline(exported)
    assert trusted["state"] == "Trusted" and trusted["failure"] == [], trusted
    assert "signingCredential.trusted" in trusted["success"]
    assert untrusted["state"] == "Valid" and untrusted["failure"] == ["signingCredential.untrusted"]

    manifest = trusted["manifest"]["manifests"][trusted["manifest"]["active_manifest"]]
    assert manifest["claim_generator_info"][0]["name"] == "Secure AI Studio"
    assert manifest["claim_generator_info"][0]["version"] == __version__
    assertions = {a["label"]: a["data"] for a in manifest["assertions"]}
    (action,) = assertions["c2pa.actions.v2"]["actions"]
    assert action["action"] == "c2pa.created" and action["digitalSourceType"] == SOURCE_TYPE
    assert action["softwareAgent"]["name"] == job["model"]
    assert assertions[ASSERTION] == {"job_id": job_id, "index": 1, "model": job["model"],
                                     "weights_sha256": job["weights_sha256"]}
    assert manifest["signature_info"]["alg"] == "Ed25519"
    assert "thumbnail" not in json.dumps(manifest)
    user = pwd.getpwuid(os.getuid()).pw_name
    box = b"".join(data for kind, data in chunks(exported.read_bytes()) if kind == b"caBX")
    for secret in (marker, "lighthouse", "fog"):
        assert secret.encode() not in box, secret
    assert user not in strings(trusted["manifest"]) and job["user"] not in strings(trusted["manifest"])

    pixel, claim = tmp_path / "pixel.png", tmp_path / "claim.png"
    pixel.write_bytes(change_last_pixel(exported.read_bytes()))
    claim.write_bytes(change_claim_byte(exported.read_bytes()))
    changed = read_offline(pixel, anchor)
    assert changed["state"] == "Invalid" and "assertion.dataHash.mismatch" in changed["failure"], changed
    forged = read_offline(claim, anchor)
    assert forged["state"] == "Invalid" and "claimSignature.mismatch" in forged["failure"], forged

    # keys.rotate: a new signing certificate from the same CA; earlier exports stay Trusted.
    before = manifest["signature_info"]["cert_serial_number"]
    rotated = await client.call("keys.rotate")
    assert rotated["c2pa"]["ca_id"] == json.loads(run_sai("ca", "export", "--json", socket_path=daemon.socket)
                                                  .stdout)["current"]["ca_id"]
    second = (await client.call("job.submit", prompt="after rotation"))["job_id"]
    assert (await wait_for(client, second))["state"] == "succeeded"
    later = tmp_path / "later.png"
    assert run_sai("export", second, "-o", str(later), socket_path=daemon.socket).returncode == 0
    new = read_offline(later, anchor)
    assert new["state"] == "Trusted"
    assert new["manifest"]["manifests"][new["manifest"]["active_manifest"]]["signature_info"]["cert_serial_number"] \
        != before
    assert read_offline(exported, anchor)["state"] == "Trusted"

    # Every certificate event is in the audit log: created at first start, issued again on rotation.
    entries = (await client.call("audit.tail", limit=1000))["entries"]
    events = [(e["action"], e["details"].get("reason")) for e in entries if e["action"].startswith("c2pa.")]
    assert events == [("c2pa.ca.create", "first start"), ("c2pa.cert.issue", "first start"),
                      ("c2pa.cert.issue", "keys.rotate")]
    issued = [e for e in entries if e["action"] == "c2pa.cert.issue"]
    assert issued[-1]["subject"] == rotated["c2pa"]["signing_id"] and issued[-1]["actor"]["user"] == user


def test_certificates_are_sealed_with_the_other_keys(tmp_path: Path):
    keys_dir = tmp_path / "keys"
    store = KeyStore.open(keys_dir, "correct horse", scrypt_log2_n=15)
    names = sorted(p.name for p in keys_dir.iterdir() if p.name.startswith("c2pa-") and ".key" in p.name)
    assert len(names) == 2 and all(name.endswith(".key.sealed") for name in names), names
    raw = store.c2pa._leaf_key.private_bytes_raw()  # type: ignore[union-attr]
    assert all(raw not in path.read_bytes() for path in keys_dir.iterdir() if path.is_file())
    again = KeyStore.open(keys_dir, "correct horse", scrypt_log2_n=15)
    assert again.c2pa.info() == store.c2pa.info() and again.c2pa.take_events() == []
    png = embed_credentials(encode_png(synthetic("smooth", 1, 64)), Provenance("j1", 0, "tiny", ""), again)
    assert read_credentials(png, again.c2pa.ca_pem().decode()).state == "Trusted"


def test_signing_certificate_is_renewed_before_it_could_expire(tmp_path: Path):
    """Each image stays verifiable at least `renew_days_left` after it was signed: the daemon never signs
    with a certificate closer than that to its end, and renews it (audited) when it gets there."""
    clock = [datetime.now(UTC)]
    life = Lifetimes(ca_days=100, signing_days=40, renew_days_left=20)
    from daemon.crypto.certs import ContentCredentials

    store = KeyStore.open(tmp_path / "keys")
    (tmp_path / "short").mkdir(mode=0o700)
    creds = ContentCredentials.open(tmp_path / "short", store, life, now=lambda: clock[0])
    assert [action for action, _, _ in creds.take_events()] == ["c2pa.ca.create", "c2pa.cert.issue"]
    notified: list[bool] = []
    creds.on_event = lambda: notified.append(True)
    first, _, _ = creds.signing()
    for days in range(1, 100):
        clock[0] += timedelta(days=1)
        cert, _, _ = creds.signing()
        left = datetime.fromisoformat(creds.info()["signing_not_after"]) - clock[0]
        assert left >= timedelta(days=life.renew_days_left)
    events = creds.take_events()
    assert cert != first and notified and {action for action, _, _ in events} >= {"c2pa.cert.issue"}
    assert any(action == "c2pa.ca.create" for action, _, _ in events)  # the CA too, once it ran short
    assert len(creds.ca_certificates()) == 2  # the earlier CA is still handed out while it is valid


def test_default_lifetimes_keep_every_image_valid_for_ten_years():
    life = Lifetimes()
    assert life.renew_days_left >= 3650 and life.signing_days - life.renew_days_left >= 3650
    assert life.ca_days - life.signing_days >= life.signing_days
    with pytest.raises(ValueError):
        Lifetimes(signing_days=10, renew_days_left=10)


def test_a_key_store_from_before_c2pa_gets_its_certificates_at_the_next_start(tmp_path: Path):
    keys_dir = tmp_path / "keys"
    KeyStore.open(keys_dir)
    for path in keys_dir.glob("c2pa*"):
        path.unlink()
    store = KeyStore.open(keys_dir)
    assert [action for action, _, _ in store.c2pa.take_events()] == ["c2pa.ca.create", "c2pa.cert.issue"]
    assert (keys_dir / "c2pa.json").exists()


def test_a_damaged_c2pa_key_is_refused_with_its_path(tmp_path: Path):
    keys_dir = tmp_path / "keys"
    KeyStore.open(keys_dir, "pass phrase", scrypt_log2_n=15)
    (sealed,) = [p for p in keys_dir.glob("c2pa-signing-*.key.sealed")]
    data = bytearray(sealed.read_bytes())
    data[-1] ^= 1
    sealed.write_bytes(bytes(data))
    with pytest.raises(KeyStoreError, match="damaged") as caught:
        KeyStore.open(keys_dir, "pass phrase", scrypt_log2_n=15)
    assert caught.value.path == str(sealed)
