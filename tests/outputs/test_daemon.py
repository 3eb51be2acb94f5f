"""Output protection through a real daemon (subprocess, tiny model): what lands on disk, export and
verify from the command line, tampering, key rotation, roles, sealed keys."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import io
import json
import os
import pwd
import secrets
import shutil
import sqlite3
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from daemon.crypto import envelope
from daemon.crypto.keys import KeyStore
from daemon.exitcodes import ExitCode
from daemon.outputs.pipeline import export_output
from tests.configs import NO_WORKER
from tests.harness import run_sai

ROOT = Path(__file__).resolve().parents[2]
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
SUFFIXES = ("manifest.json", "manifest.sig", "png.sai")
NOT_PERMITTED, CONFLICT = -32001, -32004




def mode(path: Path) -> int:
    return path.stat().st_mode & 0o777


def state_files(state_dir: Path) -> list[Path]:
    """Every regular file the daemon keeps under its state dir (the linked test model aside)."""
    found = []
    for top, dirs, files in os.walk(state_dir):  # does not follow the models/tiny symlink
        found += [Path(top) / name for name in files if not (Path(top) / name).is_symlink()]
    return found


def assert_nothing_readable_at_rest(state_dir: Path, secrets_: list[str]) -> None:
    files = state_files(state_dir)
    assert any(p.name == "jobs.sqlite3" for p in files)
    for path in files:
        data = path.read_bytes()
        for text in secrets_:
            assert text.encode() not in data, f"{text!r} found in {path}"
        assert not path.name.endswith(".png") and PNG_MAGIC not in data, f"plaintext PNG at {path}"


def openssl_verify(pub: Path, manifest: Path, sig: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["openssl", "pkeyutl", "-verify", "-pubin", "-inkey", str(pub), "-rawin",
                           "-in", str(manifest), "-sigfile", str(sig)], capture_output=True, text=True)


def expected_files(job: dict[str, Any]) -> list[str]:
    return sorted(f"{job['job_id']}-{i}.{s}" for i in range(job["params"]["count"]) for s in SUFFIXES)


def me() -> str:
    return pwd.getpwuid(os.getuid()).pw_name


async def rpc_error(client: Any, method: str, **params: Any) -> Any:
    with pytest.raises(Exception) as caught:
        await client.call(method, **params)
    return caught.value


needs_openssl = pytest.mark.skipif(shutil.which("openssl") is None, reason="needs the openssl command")


@needs_openssl
async def test_outputs_are_encrypted_signed_and_exported(make_daemon, client_of, wait_for, tmp_path: Path):
    daemon = make_daemon()
    client = await client_of(daemon)
    marker = secrets.token_hex(8)
    prompt, negative = f"a lighthouse at dusk {marker}", f"fog {marker[::-1]}"
    big_id = (await client.call("job.submit", prompt=prompt, negative_prompt=negative, width=256, height=256,
                                count=2))["job_id"]
    small_id = (await client.call("job.submit", prompt=f"small {marker}"))["job_id"]
    big, small = await wait_for(client, big_id), await wait_for(client, small_id)
    assert big["state"] == small["state"] == "succeeded", (big["error"], small["error"])

    state, out_dir = daemon.state_dir, daemon.state_dir / "outputs"
    assert mode(out_dir) == 0o700 and mode(state / "keys") == 0o700
    assert sorted(p.name for p in out_dir.iterdir()) == sorted(expected_files(big) + expected_files(small))
    for record in big["outputs"] + small["outputs"]:
        sai, manifest_path = Path(record["path"]), Path(record["manifest"])
        sig = manifest_path.with_name(manifest_path.name.replace(".json", ".sig"))
        assert sai == Path(record["sai_path"]) and sai.name.endswith(".png.sai") and sai.parent == out_dir
        assert all(mode(p) == 0o600 for p in (sai, manifest_path, sig))
        manifest = json.loads(manifest_path.read_bytes())
        job = big if manifest["job_id"] == big_id else small
        assert manifest["prompt_sha256"] == hashlib.sha256(job["params"]["prompt"].encode()).hexdigest()
        assert (manifest["png_sha256"], manifest["sai_sha256"]) == (record["png_sha256"], record["sai_sha256"])
        assert manifest["sai_sha256"] == hashlib.sha256(sai.read_bytes()).hexdigest()
        assert (manifest["kid"], manifest["signing_kid"]) == (record["kid"], record["signing_kid"])
        assert manifest["watermark"]["visible"] is True and manifest["watermark"]["invisible"] is (job is big)
        # 256x256 outputs are under the robust mark's 512x512: they get the dwtdct mark, and say why
        assert manifest["watermark"].get("invisible_method") == ("sai-mark/1" if job is big else None)
        assert "too small for the sai-mark/2 mark" in manifest["watermark"]["invisible_reason"]
        assert envelope.parse(sai.read_bytes()).job_id == manifest["job_id"]
        # The signature checks out with stock openssl and the public key the manifest names.
        pub = state / "keys" / f"signing-{manifest['signing_kid']}.pub.pem"
        checked = openssl_verify(pub, manifest_path, sig)
        assert checked.returncode == 0 and "Signature Verified Successfully" in checked.stdout, checked.stderr
    forged = tmp_path / "forged.manifest.json"
    forged.write_bytes(Path(big["outputs"][0]["manifest"]).read_bytes().replace(b'"index":0', b'"index":7'))
    assert openssl_verify(state / "keys" / "signing.pub.pem", forged,
                          Path(big["outputs"][0]["manifest"]).with_suffix(".sig")).returncode != 0

    # No image and no prompt in plain form anywhere the daemon stores things (database and WAL included).
    assert_nothing_readable_at_rest(state, [marker, marker[::-1]])

    # `sai export` decrypts through the daemon and writes a 0600 PNG; its pixels are the output's.
    target = tmp_path / "exported.png"
    out = run_sai("export", big_id, "--index", "1", "-o", str(target), socket_path=daemon.socket)
    assert out.returncode == 0, out.stderr
    assert mode(target) == 0o600
    data = target.read_bytes()
    assert hashlib.sha256(data).hexdigest() == big["outputs"][1]["png_sha256"]
    direct = export_output(out_dir, big_id, 1, KeyStore.open(state / "keys"))
    with Image.open(target) as exported, Image.open(io.BytesIO(direct)) as reference:
        assert exported.size == (256, 256) and exported.mode == "RGB"
        assert np.array_equal(np.asarray(exported), np.asarray(reference))
        assert exported.text["sai:job_id"] == big_id and exported.text["sai:index"] == "1"
    first = tmp_path / "first.png"
    assert run_sai("export", big_id, "-o", str(first), socket_path=daemon.socket).returncode == 0
    assert not np.array_equal(np.asarray(Image.open(first)), np.asarray(Image.open(target)))

    # The exported file identifies itself; verify checks the job's outputs without decrypting.
    out = run_sai("inspect", str(target), socket_path=daemon.socket)
    assert out.returncode == 0 and f"matches job {big_id}" in out.stdout and marker not in out.stdout
    out = run_sai("verify", big_id, socket_path=daemon.socket)
    assert out.returncode == 0, out.stderr
    assert [line.split()[:2] for line in out.stdout.splitlines()] == [["ok", f"{big_id}-0"], ["ok", f"{big_id}-1"]]
    report = await client.call("output.verify", job_id=small_id)
    assert report["ok"] and [o["index"] for o in report["outputs"]] == [0]

    # A preview is a small PNG with no metadata (no prompt leaves in it).
    preview = await client.call("output.preview", job_id=big_id, index=0, max_side=64)
    png = base64.b64decode(preview["png"])
    assert png.startswith(PNG_MAGIC) and marker.encode() not in png
    with Image.open(io.BytesIO(png)) as image:
        assert image.size == (64, 64) == (preview["width"], preview["height"])
        assert not [key for key in image.text if key.startswith("sai:")]


@needs_openssl
async def test_tampering_rotation_and_roles(make_daemon, client_of, wait_for, tmp_path: Path):
    daemon = make_daemon()
    client = await client_of(daemon)
    marker = secrets.token_hex(8)
    prompt = f"a harbour {marker}"
    job_id = (await client.call("job.submit", prompt=prompt, count=2))["job_id"]
    job = await wait_for(client, job_id)
    assert job["state"] == "succeeded", job["error"]
    state, out_dir = daemon.state_dir, daemon.state_dir / "outputs"

    # One flipped bit in the ciphertext: export refuses with the reason and writes nothing.
    sai = Path(job["outputs"][0]["path"])
    original = sai.read_bytes()
    damaged = bytearray(original)
    damaged[-40] ^= 0x01
    sai.write_bytes(bytes(damaged))
    target = tmp_path / "damaged.png"
    out = run_sai("export", job_id, "-o", str(target), socket_path=daemon.socket)
    assert out.returncode == 1
    assert f"export of {job_id} image 0 refused" in out.stderr and "ciphertext" in out.stderr, out.stderr
    assert list(tmp_path.iterdir()) == []  # no file, no partial file
    error = await rpc_error(client, "output.export", job_id=job_id, index=0)
    assert error.code == CONFLICT and error.data["field"] == "ciphertext"
    assert (await rpc_error(client, "output.preview", job_id=job_id, index=0)).code == CONFLICT
    out = run_sai("verify", job_id, socket_path=daemon.socket)
    assert out.returncode == ExitCode.VERIFY_FAILED and f"FAILED  {job_id}-0" in out.stdout and f"ok      {job_id}-1" in out.stdout
    # ... and the daemon keeps serving: the intact image still exports.
    assert (await client.call("daemon.status"))["pid"] == daemon.proc.pid
    fine = tmp_path / "fine.png"
    assert run_sai("export", job_id, "--index", "1", "-o", str(fine), socket_path=daemon.socket).returncode == 0
    fine.unlink()
    sai.write_bytes(original)

    # Rotation: new keys, every output and prompt re-wrapped; old outputs still export and verify.
    manifests = {p: p.read_bytes() for p in out_dir.glob("*.manifest.json")}
    before = {record["index"]: Path(record["path"]).read_bytes() for record in job["outputs"]}
    old_pub = (state / "keys" / "signing.pub.pem").read_bytes()
    old_signing = job["outputs"][0]["signing_kid"]
    rotated = await client.call("keys.rotate")
    assert rotated["previous_signing_kid"] == old_signing != rotated["signing_kid"]
    assert rotated["previous_kek_id"] == job["outputs"][0]["kid"] != rotated["kek_id"]
    assert rotated["outputs"]["rewrapped"] == 2 and rotated["outputs"]["failed"] == []
    assert rotated["prompts"] == {"rewrapped": 1, "failed": []}
    assert {p: p.read_bytes() for p in out_dir.glob("*.manifest.json")} == manifests  # never rewritten
    assert (state / "keys" / "signing.pub.pem").read_bytes() != old_pub
    for record in job["outputs"]:
        new, old = envelope.parse(Path(record["path"]).read_bytes()), envelope.parse(before[record["index"]])
        assert (old.kid, new.kid) == (record["kid"], rotated["kek_id"])
        assert new.ciphertext.tobytes() == old.ciphertext.tobytes() and new.aad == old.aad  # not re-encrypted
        manifest = Path(record["manifest"])
        assert openssl_verify(state / "keys" / f"signing-{old_signing}.pub.pem", manifest,
                              manifest.with_suffix(".sig")).returncode == 0
    report = await client.call("output.verify", job_id=job_id)
    assert report["ok"] and all(o["rewrapped"] and o["signing_kid"] == old_signing for o in report["outputs"])
    out = run_sai("export", job_id, "--index", "1", "-o", str(target), socket_path=daemon.socket)
    assert out.returncode == 0, out.stderr
    assert hashlib.sha256(target.read_bytes()).hexdigest() == job["outputs"][1]["png_sha256"]
    assert (await client.call("job.get", job_id=job_id))["params"]["prompt"] == prompt
    con = sqlite3.connect(state / "jobs.sqlite3")
    try:
        blobs = [bytes(b) for row in con.execute("SELECT prompt, negative_prompt FROM jobs") for b in row if b]
    finally:
        con.close()
    assert {envelope.parse(b).kid for b in blobs} == {rotated["kek_id"]}
    after = await wait_for(client, (await client.call("job.submit", prompt=f"after {marker}"))["job_id"])
    assert after["state"] == "succeeded", after["error"]
    assert (after["outputs"][0]["kid"], after["outputs"][0]["signing_kid"]) == (rotated["kek_id"],
                                                                               rotated["signing_kid"])

    # The same state under a daemon where this user is a viewer: may verify, may not decrypt.
    assert await asyncio.to_thread(daemon.terminate) == 0
    viewer = make_daemon({**NO_WORKER, "auth": {"viewer_users": [me()]}}, state_from=daemon)
    client = await client_of(viewer)
    assert (await client.call("daemon.status"))["you"]["role"] == "viewer"
    for method, params in (("output.export", {"job_id": job_id}), ("output.preview", {"job_id": job_id}),
                           ("keys.rotate", {})):
        error = await rpc_error(client, method, **params)
        assert error.code == NOT_PERMITTED and error.data["needed"] in ("operator", "admin"), method
    assert (await client.call("output.verify", job_id=job_id))["ok"]
    refused = tmp_path / "refused.png"
    out = run_sai("export", job_id, "-o", str(refused), socket_path=viewer.socket)
    assert out.returncode == ExitCode.DENIED and "operator" in out.stderr and not refused.exists()
    assert_nothing_readable_at_rest(state, [marker])


async def test_sealed_keys_need_the_passphrase(make_daemon, client_of, monkeypatch: pytest.MonkeyPatch):
    sealed = {**NO_WORKER, "keys": {"sealed": True, "scrypt_log2_n": 15}}
    monkeypatch.setenv("SAI_PASSPHRASE", "correct horse battery")
    daemon = make_daemon(sealed)
    client = await client_of(daemon)
    marker = secrets.token_hex(8)
    job_id = (await client.call("job.submit", prompt=f"sealed {marker}"))["job_id"]
    keys = daemon.state_dir / "keys"
    assert json.loads((keys / "keys.json").read_text())["sealed"] is True
    assert not list(keys.glob("**/*.key")) and list(keys.glob("kek/*.key.sealed"))
    assert (keys / "signing.key.sealed").exists() and not (keys / "signing.key").exists()
    assert await asyncio.to_thread(daemon.terminate) == 0

    def start(passphrase: str | None) -> subprocess.CompletedProcess[str]:
        env = {k: v for k, v in os.environ.items() if k != "SAI_PASSPHRASE"}
        if passphrase is not None:
            env["SAI_PASSPHRASE"] = passphrase
        return subprocess.run([sys.executable, "-m", "console.cli", "daemon", "--socket", str(daemon.socket),
                               "--state-dir", str(daemon.state_dir), "--config", str(daemon.config_file)],
                              capture_output=True, text=True, cwd=ROOT, env=env, timeout=120,
                              stdin=subprocess.DEVNULL)

    missing = start(None)
    assert missing.returncode == ExitCode.NOT_STARTED and "not starting" in missing.stderr and "SAI_PASSPHRASE" in missing.stderr
    wrong = start("wrong horse")
    assert wrong.returncode == ExitCode.NOT_STARTED and "wrong passphrase" in wrong.stderr
    again = make_daemon(sealed, state_from=daemon)
    client = await client_of(again)
    assert (await client.call("job.get", job_id=job_id))["params"]["prompt"] == f"sealed {marker}"
    assert_nothing_readable_at_rest(again.state_dir, [marker])


@pytest.mark.parametrize("sealed", [False, True], ids=["plain", "sealed"])
async def test_a_rotation_the_audit_log_never_announced_is_announced_at_the_next_start(
        sealed: bool, make_daemon, client_of, monkeypatch: pytest.MonkeyPatch):
    """The daemon dies after the keys rotated on disk and before the audit entry that announces the
    new signing key: the next start still holds the old key, records the rotation, then drops it."""
    config = {**NO_WORKER, "keys": {"sealed": sealed, "scrypt_log2_n": 15}}
    if sealed:
        monkeypatch.setenv("SAI_PASSPHRASE", "correct horse battery")
    daemon = make_daemon(config)
    client = await client_of(daemon)
    job_id = (await client.call("job.submit", prompt="before the rotation"))["job_id"]
    assert await asyncio.to_thread(daemon.terminate) == 0
    keys = daemon.state_dir / "keys"
    store = KeyStore.open(keys, "correct horse battery" if sealed else None, scrypt_log2_n=15)
    old_kid, (_, new_kid) = store.signing_kid, store.rotate()  # ...and the daemon is gone before announcing it
    assert list(keys.glob("signing.key*.previous"))

    again = make_daemon(config, state_from=daemon)
    client = await client_of(again)
    rotations = (await client.call("audit.tail", limit=10, action="audit.key_rotate"))["entries"]
    assert len(rotations) == 1
    assert (await client.call("audit.verify", deep=True))["ok"]
    assert (await client.call("job.get", job_id=job_id))["params"]["prompt"] == "before the rotation"
    assert not list(keys.glob("signing.key*.previous"))
    assert "previous_signing_kid" not in json.loads((keys / "keys.json").read_text())
    assert old_kid != new_kid
