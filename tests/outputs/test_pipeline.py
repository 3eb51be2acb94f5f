"""protect_image end to end: files and modes, manifest and openssl, export/verify, tampering,
crash ordering, rotation, sealed keys, preview, inspect, settings."""

from __future__ import annotations

import io
import json
import shutil
import stat
import subprocess
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from daemon.config import ConfigError
from daemon.crypto import (
    IntegrityError,
    ManifestError,
    OutputError,
    TruncatedError,
    UnknownKeyError,
    WrongPassphraseError,
    envelope,
)
from daemon.crypto.keys import KeyStore
from daemon.outputs import pipeline
from daemon.outputs.pipeline import (
    OutputSettings,
    export_output,
    inspect_png,
    preview_png,
    protect_image,
    rotate_outputs,
    verify_output,
)
from daemon.outputs.png import encode_png, read_png, sai_metadata
from tests.outputs.out_helpers import image, keys_dir, keystore, make_info, out_dir, settings  # noqa: F401  (fixtures)

OPENSSL = shutil.which("openssl")


def openssl_verify(pub: Path, manifest: Path, sig: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([OPENSSL, "pkeyutl", "-verify", "-pubin", "-inkey", str(pub), "-rawin",
                           "-in", str(manifest), "-sigfile", str(sig)], capture_output=True, text=True)


@pytest.fixture
def protected(image, keystore, settings, out_dir):
    return protect_image(image("smooth", 7), make_info(), keystore, settings, out_dir)


def test_writes_three_files_with_mode_0600(protected, out_dir: Path) -> None:
    assert sorted(p.name for p in out_dir.iterdir()) == [
        "j20261126-0001-0.manifest.json", "j20261126-0001-0.manifest.sig", "j20261126-0001-0.png.sai"]
    for path in protected.paths:
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert set(protected.timings) == {"visible", "invisible", "png", "c2pa", "hash", "encrypt", "write_image", "manifest",
                                      "write_manifest"}
    assert b"lighthouse" not in protected.sai_path.read_bytes()


def test_manifest_fields(protected, keystore) -> None:
    m = json.loads(protected.manifest_path.read_bytes())
    assert m == protected.manifest
    assert m["job_id"] == "j20261126-0001" and m["index"] == 0 and m["file"] == "j20261126-0001-0.png.sai"
    assert m["params"]["steps"] == 20 and m["seed"] == 1234 and m["model_id"] == "tiny"
    assert m["weights_sha256"] == "ab" * 32 and m["created_at"] == "2026-11-26T12:00:00Z"
    import hashlib

    assert m["prompt_sha256"] == hashlib.sha256("a lighthouse at dusk, ünïcödé ✓".encode()).hexdigest()
    assert m["sai_sha256"] == hashlib.sha256(protected.sai_path.read_bytes()).hexdigest() == protected.sai_sha256
    assert m["kid"] == keystore.current_kek_id and m["signing_kid"] == keystore.signing_kid
    assert "lighthouse" not in protected.manifest_path.read_text()
    assert len(protected.sig_path.read_bytes()) == 64


@pytest.mark.skipif(OPENSSL is None, reason="openssl command line not installed")
def test_openssl_verifies_the_manifest(protected, keys_dir: Path) -> None:
    result = openssl_verify(keys_dir / "signing.pub.pem", protected.manifest_path, protected.sig_path)
    assert result.returncode == 0 and "Signature Verified Successfully" in result.stdout
    tampered = protected.manifest_path.with_name("tampered.json")
    tampered.write_bytes(protected.manifest_path.read_bytes().replace(b'"seed":1234', b'"seed":1235'))
    assert openssl_verify(keys_dir / "signing.pub.pem", tampered, protected.sig_path).returncode != 0


def test_export_and_metadata_round_trip(protected, keystore, out_dir: Path) -> None:
    png = export_output(out_dir, "j20261126-0001", 0, keystore)
    rgb, text = read_png(png)
    meta = sai_metadata(text)
    assert meta["job_id"] == "j20261126-0001" and meta["index"] == "0" and meta["seed"] == "1234"
    assert meta["prompt"] == "a lighthouse at dusk, ünïcödé ✓" and meta["negative_prompt"] == "blurry"
    assert meta["model_id"] == "tiny" and json.loads(meta["params"])["guidance"] == 7.5
    assert meta["fingerprint"] == protected.fingerprint and rgb.shape == (256, 256, 3)


def test_verify_ok(protected, keystore, out_dir: Path, keys_dir: Path) -> None:
    for target in ("j20261126-0001", protected.sai_path, protected.manifest_path):
        report = verify_output(target, out_dir, keys_dir)
        assert report["ok"], report
        assert report["outputs"][0]["checks"]["encrypted_file"].startswith("ok")


def _fail(report: dict) -> dict:
    assert not report["ok"]
    return report["outputs"][0]["error"]


@pytest.mark.parametrize("damage, field", [
    ("manifest_byte", "signature"), ("signature_byte", "signature"), ("signature_short", "signature"),
    ("sai_ciphertext", "ciphertext"), ("sai_truncated", "length"), ("sai_header_nonce", "header"),
    ("sai_wrapped_key", "wrapped_key"), ("sai_missing", "file"), ("manifest_missing", "file"),
])
def test_damage_is_named_by_verify_and_export_writes_nothing(protected, keystore, out_dir: Path, keys_dir: Path,
                                                              damage: str, field: str) -> None:
    sai, man, sig = protected.paths
    blob = bytearray(sai.read_bytes())
    header_len = int.from_bytes(blob[5:9], "big")
    if damage == "manifest_byte":
        man.write_bytes(man.read_bytes().replace(b'"index":0', b'"index":1'))
    elif damage == "signature_byte":
        s = bytearray(sig.read_bytes()); s[10] ^= 1; sig.write_bytes(bytes(s))
    elif damage == "signature_short":
        sig.write_bytes(sig.read_bytes()[:40])
    elif damage == "sai_ciphertext":
        blob[-100] ^= 1; sai.write_bytes(bytes(blob))
    elif damage == "sai_truncated":
        sai.write_bytes(bytes(blob[:-500]))
    elif damage == "sai_header_nonce":
        header = json.loads(blob[9:9 + header_len])
        nonce = bytearray(envelope.base64.b64decode(header["nonce"])); nonce[0] ^= 1
        header["nonce"] = envelope.base64.b64encode(bytes(nonce)).decode()
        sai.write_bytes(envelope._build(header, bytes(blob[9 + header_len:])))
    elif damage == "sai_wrapped_key":
        header = json.loads(blob[9:9 + header_len])
        wrapped = bytearray(envelope.base64.b64decode(header["wrapped_key"])); wrapped[3] ^= 1
        header["wrapped_key"] = envelope.base64.b64encode(bytes(wrapped)).decode()
        sai.write_bytes(envelope._build(header, bytes(blob[9 + header_len:])))
    elif damage == "sai_missing":
        sai.unlink()
    elif damage == "manifest_missing":
        man.unlink()
    error = _fail(verify_output("j20261126-0001", out_dir, keys_dir))
    assert error["field"] == field and error["message"]
    before = sorted(p.name for p in out_dir.iterdir())
    with pytest.raises(OutputError) as caught:
        export_output(out_dir, "j20261126-0001", 0, keystore)
    assert caught.value.field == field
    assert sorted(p.name for p in out_dir.iterdir()) == before  # nothing written, no plaintext anywhere


def test_swapped_manifest_does_not_match(image, keystore, settings, out_dir: Path, keys_dir: Path) -> None:
    a = protect_image(image("smooth", 1), make_info("job-a"), keystore, settings, out_dir)
    b = protect_image(image("smooth", 2), make_info("job-b"), keystore, settings, out_dir)
    shutil.copy(b.manifest_path, a.manifest_path)
    shutil.copy(b.sig_path, a.sig_path)
    error = _fail(verify_output(a.sai_path, out_dir, keys_dir))
    assert error["error"] == "ManifestError" and "describes job-b-0.png.sai" in error["message"]
    shutil.copy(b.sai_path, a.sai_path)  # even when the image travels along, names must agree
    with pytest.raises(ManifestError):
        export_output(out_dir, "job-a", 0, keystore)


def test_unknown_signing_key(protected, out_dir: Path, tmp_path: Path) -> None:
    other = KeyStore.open(tmp_path / "elsewhere")
    error = _fail(verify_output(protected.sai_path, out_dir, other))
    assert error["error"] == "UnknownKeyError" and error["field"] == "signing_kid"


def test_unknown_kek_on_export(protected, out_dir: Path, keys_dir: Path) -> None:
    for key_file in (keys_dir / "kek").iterdir():
        key_file.unlink()
    store = KeyStore.__new__(KeyStore)  # a store that lost its KEK but still has the public keys
    KeyStore.__init__(store, keys_dir, json.loads((keys_dir / "keys.json").read_bytes()), None)
    store._load_signing_key()
    with pytest.raises(UnknownKeyError, match="not in"):
        export_output(out_dir, "j20261126-0001", 0, store)


def test_crash_before_manifest_leaves_no_manifest_and_retry_succeeds(image, keystore, settings, out_dir: Path,
                                                                      keys_dir: Path, monkeypatch) -> None:
    real = pipeline.atomic_write

    def crash_on_manifest(path: Path, data: bytes, *args: object, **kwargs: object) -> Path:
        if path.name.endswith(".manifest.json"):
            raise OSError(28, "No space left on device")
        return real(path, data, *args, **kwargs)

    monkeypatch.setattr(pipeline, "atomic_write", crash_on_manifest)
    with pytest.raises(OSError):
        protect_image(image("smooth", 3), make_info(), keystore, settings, out_dir)
    monkeypatch.undo()
    names = sorted(p.name for p in out_dir.iterdir())
    assert "j20261126-0001-0.manifest.json" not in names and not any(".tmp-" in n for n in names)
    assert _fail(verify_output("j20261126-0001", out_dir, keys_dir))["field"] == "file"
    done = protect_image(image("smooth", 3), make_info(), keystore, settings, out_dir)
    assert verify_output("j20261126-0001", out_dir, keys_dir)["ok"]
    with pytest.raises(OutputError, match="written once"):
        protect_image(image("smooth", 3), make_info(), keystore, settings, out_dir)
    assert done.manifest_path.exists()


def test_rotation_keeps_old_outputs_exportable_and_old_manifests_verifiable(image, keys_dir: Path, settings,
                                                                             out_dir: Path) -> None:
    store = KeyStore.open(keys_dir)
    old = protect_image(image("smooth", 4), make_info("job-old"), store, settings, out_dir)
    old_png = export_output(out_dir, "job-old", 0, store)
    old_signing, old_kek = store.signing_kid, store.current_kek_id
    store.rotate()
    report = rotate_outputs(out_dir, store)
    assert report["rewrapped"] == 1 and not report["failed"]
    assert envelope.parse(old.sai_path.read_bytes()).kid == store.current_kek_id != old_kek
    new = protect_image(image("smooth", 5), make_info("job-new"), store, settings, out_dir)
    assert new.signing_kid == store.signing_kid != old_signing
    store.rotate()
    assert rotate_outputs(out_dir, store)["rewrapped"] == 2
    assert rotate_outputs(out_dir, store) == {"kid": store.current_kek_id, "rewrapped": 0, "already_current": 2,
                                              "failed": []}
    reopened = KeyStore.open(keys_dir)
    assert export_output(out_dir, "job-old", 0, reopened) == old_png
    export_output(out_dir, "job-new", 0, reopened)
    for target in ("job-old", "job-new"):
        result = verify_output(target, out_dir, keys_dir)
        assert result["ok"] and result["outputs"][0]["rewrapped"], result
    assert json.loads(old.manifest_path.read_bytes())["signing_kid"] == old_signing  # manifest untouched
    if OPENSSL:
        pub = keys_dir / f"signing-{old_signing}.pub.pem"
        assert openssl_verify(pub, old.manifest_path, old.sig_path).returncode == 0


def test_rotate_outputs_reports_damaged_files(protected, keystore, out_dir: Path) -> None:
    protected.sai_path.write_bytes(b"SAIE\x01garbage")
    keystore.rotate()
    report = rotate_outputs(out_dir, keystore)
    assert report["rewrapped"] == 0 and report["failed"][0]["error"] in ("HeaderError", "TruncatedError")


def test_sealed_store_and_wrong_passphrase(image, keys_dir: Path, settings, out_dir: Path) -> None:
    store = KeyStore.open(keys_dir, "open sesame", scrypt_log2_n=15)
    protect_image(image("smooth", 6), make_info(), store, settings, out_dir)
    with pytest.raises(WrongPassphraseError):
        KeyStore.open(keys_dir, "open says me")
    assert export_output(out_dir, "j20261126-0001", 0, KeyStore.open(keys_dir, "open sesame"))[:8] == b"\x89PNG\r\n\x1a\n"


def test_truncated_encrypted_file_on_decrypt_path(protected, keystore) -> None:
    blob = protected.sai_path.read_bytes()
    with pytest.raises(TruncatedError):
        envelope.decrypt(blob[:12], keystore)
    with pytest.raises(IntegrityError):
        envelope.decrypt(blob[:-1], keystore)


def test_preview(protected, keystore, out_dir: Path) -> None:
    png = export_output(out_dir, "j20261126-0001", 0, keystore)
    small = preview_png(png, 64)
    with Image.open(io.BytesIO(small)) as im:
        assert im.size == (64, 64) and not getattr(im, "text", {})
    assert b"lighthouse" not in small
    assert pipeline.preview_output(out_dir, "j20261126-0001", 0, keystore, 300) == preview_png(png, 300)


def test_inspect_exported_and_stripped(protected, keystore, out_dir: Path, tmp_path: Path) -> None:
    exported = tmp_path / "out.png"
    exported.write_bytes(export_output(out_dir, "j20261126-0001", 0, keystore))
    report = inspect_png(exported)
    assert report["invisible"]["fingerprint"] == protected.fingerprint and report["invisible"]["present"]
    assert report["invisible"]["matched_job"] == "j20261126-0001" and report["invisible"]["bit_accuracy"] == 1.0
    assert report["visible"]["present"] is True and report["metadata"]["seed"] == "1234"
    stripped = tmp_path / "stripped.png"
    stripped.write_bytes(encode_png(read_png(exported.read_bytes())[0]))
    bare = inspect_png(stripped)
    assert bare["metadata"] == {} and bare["invisible"]["fingerprint"] == protected.fingerprint
    assert bare["invisible"]["matched_job"] is None and bare["visible"]["present"] is None
    found = inspect_png(stripped, out_dir)
    assert found["invisible"]["matched_job"] == "j20261126-0001"
    with pytest.raises(OutputError, match="encrypted output"):
        inspect_png(protected.sai_path)
    (tmp_path / "junk.png").write_bytes(b"junk")
    with pytest.raises(OutputError, match="not an image"):
        inspect_png(tmp_path / "junk.png")


def test_visible_off_and_small_images(image, keystore, out_dir: Path, tmp_path: Path) -> None:
    off = OutputSettings.defaults(visible=False)
    rgb = image("smooth", 8)
    out = protect_image(rgb, make_info("job-off"), keystore, off, out_dir)
    png = export_output(out_dir, "job-off", 0, keystore)
    assert out.manifest["watermark"] == {
        "visible": False, "invisible": True, "invisible_method": "sai-mark/1",
        "invisible_reason": "a 256x256 image is too small for the sai-mark/2 mark (needs at least 512x512)"}
    path = tmp_path / "off.png"
    path.write_bytes(png)
    assert inspect_png(path)["visible"]["present"] is None
    small = protect_image(image("smooth", 9, 128), make_info("job-small"), keystore, OutputSettings.defaults(), out_dir)
    assert small.manifest["watermark"] == {
        "visible": True, "invisible": False,
        "invisible_reason": "a 128x128 image is too small for the sai-mark/2 mark (needs at least 512x512)"}
    with pytest.raises(OutputError, match="uint8"):
        protect_image(rgb.astype(np.float32), make_info("job-bad"), keystore, off, out_dir)
    with pytest.raises(OutputError, match="cannot name"):
        protect_image(rgb, make_info("../escape"), keystore, off, out_dir)


def test_settings_from_config() -> None:
    from daemon import config

    loaded = config.load(system_file=None, environ={})
    settings = OutputSettings.from_config(loaded)
    assert settings == OutputSettings.defaults()
    for key, value, words in (("watermark__opacity", 1.5, "between 0 and 1"),
                              ("watermark__position", "middle", "one of top-left"),
                              ("watermark__text", "{prompt}", "bad template"),
                              ("watermark__visible", "yes", "must be a boolean"),
                              ("watermark__invisible_strength", 4, "between 8 and 128"),
                              ("outputs__png_compress_level", 10, "between 0 and 9")):
        with pytest.raises(ConfigError, match=words) as err:
            loaded.replace(**{key: value})
        assert err.value.key == key.replace("__", ".")
    with pytest.raises(ConfigError, match="watermark.logo"):
        OutputSettings.from_config(loaded.replace(watermark__visible_kind="logo", watermark__logo="/nonexistent.png"))
    assert OutputSettings.defaults(opacity=1).opacity == 1.0
