"""Checking outputs: verify (no decryption), export (verify, then decrypt), preview, inspect a PNG."""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, Union

import numpy as np

from daemon.crypto import FormatError, HashMismatchError, ManifestError, MissingOutputError, OutputError, envelope
from daemon.crypto.keys import load_public_keys
from daemon.outputs import watermark
from daemon.outputs.manifest import check_encrypted_file, output_paths, parse_manifest, sha256_hex, verify_signature
from daemon.outputs.png import encode_png, read_png, sai_metadata
from daemon.outputs.visible import PRESENT_THRESHOLD, MarkSpec, logo_digest, mark_score

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

    from daemon.crypto.keys import KeyStore

PublicKeys = Union[Mapping[str, "Ed25519PublicKey"], "KeyStore", Path, str]
SUFFIXES = (".png.sai", ".manifest.json", ".manifest.sig")


def _keys(public_keys: PublicKeys) -> Mapping[str, Ed25519PublicKey]:
    if isinstance(public_keys, (str, os.PathLike)):
        return load_public_keys(Path(public_keys))
    if hasattr(public_keys, "public_keys"):
        return public_keys.public_keys()  # a KeyStore
    return public_keys


def _read(path: Path, what: str) -> bytes:
    try:
        return path.read_bytes()
    except FileNotFoundError:
        raise MissingOutputError(f"{what} {path.name} is missing from {path.parent}", path=str(path)) from None


def _signed_manifest(manifest_path: Path, sig_path: Path, keys: Mapping[str, Ed25519PublicKey]) -> dict[str, Any]:
    data = _read(manifest_path, "manifest")
    signature = _read(sig_path, "signature")
    return verify_signature(data, signature, keys)


def _verify_one(sai_path: Path, manifest_path: Path, sig_path: Path,
                keys: Mapping[str, Ed25519PublicKey], current_signing: str | None) -> dict[str, Any]:
    report: dict[str, Any] = {"ok": False, "file": str(sai_path), "manifest": str(manifest_path), "checks": {}}
    checks = report["checks"]
    try:
        manifest = _signed_manifest(manifest_path, sig_path, keys)
        checks["signature"] = f"ok ({manifest['signing_kid']})"
        report.update(job_id=manifest["job_id"], index=manifest["index"], signing_kid=manifest["signing_kid"],
                      kid_at_write=manifest["kid"], png_sha256=manifest["png_sha256"])
        if current_signing is not None:
            report["signed_by_current_key"] = manifest["signing_kid"] == current_signing
        if manifest["file"] != sai_path.name:
            raise ManifestError(f"manifest describes {manifest['file']}, not {sai_path.name}", field="file")
        result = check_encrypted_file(manifest, _read(sai_path, "encrypted image"))
        report.update(kid=result["kid"], rewrapped=result["match"] == "rewrapped")
        checks["encrypted_file"] = ("ok (sha256 matches)" if result["match"] == "exact" else
                                    f"ok (re-wrapped from {manifest['kid']} to {result['kid']}; ciphertext and "
                                    f"protected header match)")
        checks["png"] = "not checked (needs decryption; `export` checks png_sha256)"
        report["ok"] = True
    except OutputError as exc:
        report["error"] = exc.to_dict()
    return report


def _targets(target: str | Path, out_dir: Path, index: int | None) -> list[tuple[Path, Path, Path]]:
    """A Path names one output by any of its three files; a str is a job id (never a path, so a
    job id from a client cannot point outside the outputs directory)."""
    if isinstance(target, Path):
        text = str(target)
        for suffix in SUFFIXES:
            if text.endswith(suffix):
                stem = text[: -len(suffix)]
                return [(Path(f"{stem}.png.sai"), Path(f"{stem}.manifest.json"), Path(f"{stem}.manifest.sig"))]
        raise MissingOutputError(f"{target} is not a .png.sai, .manifest.json or .manifest.sig file",
                                 path=text)
    text = target
    if index is not None:
        return [output_paths(out_dir, text, index)]
    output_paths(out_dir, text, 0)  # validates the job id
    found: set[int] = set()
    for path in Path(out_dir).glob(f"{text}-*"):
        rest = path.name[len(text) + 1:]
        number, _, suffix = rest.partition(".")
        if number.isdigit() and "." + suffix in SUFFIXES:
            found.add(int(number))
    if not found:
        raise MissingOutputError(f"no outputs for job {text!r} in {out_dir}")
    return [output_paths(out_dir, text, n) for n in sorted(found)]


def verify_output(target: str | Path, out_dir: Path, public_keys: PublicKeys, index: int | None = None,
                  current_signing_kid: str | None = None) -> dict[str, Any]:
    """Check signatures and hashes of one output file or all of a job's outputs, decrypting nothing.

    `target`: a Path to a .png.sai / .manifest.json / .manifest.sig, or a job id as a str (all its
    images, or image `index`). Returns {"ok", "target", "outputs": [per-output report]}.
    """
    keys = _keys(public_keys)
    if current_signing_kid is None and hasattr(public_keys, "signing_kid"):
        current_signing_kid = public_keys.signing_kid
    outputs = [_verify_one(*paths, keys, current_signing_kid) for paths in _targets(target, Path(out_dir), index)]
    return {"ok": all(o["ok"] for o in outputs), "target": str(target), "outputs": outputs}


def export_output(out_dir: Path, job_id: str, index: int, keystore: KeyStore) -> bytes:
    """The PNG bytes of an output, after checking signature and hashes; raises OutputError otherwise."""
    sai_path, manifest_path, sig_path = output_paths(Path(out_dir), job_id, index)
    manifest = _signed_manifest(manifest_path, sig_path, keystore.public_keys())
    if manifest["job_id"] != job_id or manifest["index"] != index:
        raise ManifestError(f"manifest {manifest_path.name} describes {manifest['job_id']}-{manifest['index']}")
    blob = _read(sai_path, "encrypted image")
    check_encrypted_file(manifest, blob)
    _header, png = envelope.decrypt(blob, keystore)
    if sha256_hex(png) != manifest["png_sha256"] or len(png) != manifest["png_size"]:
        raise HashMismatchError("decrypted PNG does not match png_sha256 in the signed manifest", field="png")
    return png


def preview_png(png: bytes, max_side: int = 256) -> bytes:
    """A small PNG (longest side ≤ max_side) without any metadata: no prompt leaves in a preview."""
    import cv2

    try:
        rgb, _ = read_png(png)
    except ValueError as exc:
        raise FormatError(f"cannot preview: {exc}", field="png") from None
    height, width = rgb.shape[:2]
    factor = min(1.0, max_side / max(height, width))
    if factor < 1.0:
        size = (max(1, round(width * factor)), max(1, round(height * factor)))
        rgb = cv2.resize(rgb, size, interpolation=cv2.INTER_AREA)
    return encode_png(np.ascontiguousarray(rgb), None, 6)


def preview_output(out_dir: Path, job_id: str, index: int, keystore: KeyStore, max_side: int = 256) -> bytes:
    return preview_png(export_output(out_dir, job_id, index, keystore), max_side)


def _candidates(outputs_dir: Path | None) -> dict[str, str]:
    """fingerprint hex → job id, from the manifests in `outputs_dir` (unverified: a lookup hint)."""
    found: dict[str, str] = {}
    if outputs_dir is None or not Path(outputs_dir).is_dir():
        return found
    for path in Path(outputs_dir).glob("*.manifest.json"):
        try:
            manifest = parse_manifest(path.read_bytes())
        except (OSError, ManifestError):
            continue
        found[manifest["fingerprint"]] = manifest["job_id"]
    return found


def _visible_report(rgb: np.ndarray, meta: Mapping[str, str]) -> dict[str, Any]:
    method = "correlation with the mark re-drawn from the PNG's sai:visible_mark metadata"
    if "visible_mark" not in meta:
        return {"present": None, "score": None, "method": method,
                "reason": "no sai:visible_mark metadata (stripped, or made with the visible mark off)"}
    try:
        spec = MarkSpec.from_json(json.loads(meta["visible_mark"]))
    except (ValueError, TypeError) as exc:
        return {"present": None, "score": None, "method": method, "reason": f"unreadable metadata: {exc}"}
    if spec.kind == "logo" and (not spec.logo or not Path(spec.logo).is_file()
                                or logo_digest(spec.logo) != spec.logo_sha256):
        return {"present": None, "score": None, "method": method,
                "reason": f"the logo {spec.logo!r} is not available here to re-draw the mark"}
    score = mark_score(rgb, spec)
    return {"present": score >= PRESENT_THRESHOLD, "score": round(score, 4), "threshold": PRESENT_THRESHOLD,
            "method": method, "kind": spec.kind, "text": spec.text if spec.kind != "logo" else None}


def _match_legacy(invisible: dict[str, Any], reading: watermark.Reading, meta_job: str | None,
                  outputs_dir: Path | None) -> None:
    """The dwtdct mark has no error correction: a job matches when 56 of its 64 bits agree."""
    if meta_job:
        invisible["bit_accuracy"] = round(reading.accuracy(meta_job), 4)
        if reading.matches(meta_job):
            invisible.update(matched_job=meta_job, match_source="png metadata")
    if invisible["matched_job"] is None:
        for job in _candidates(outputs_dir).values():
            if reading.matches(job):
                invisible.update(matched_job=job, match_source=f"manifest in {outputs_dir}",
                                 bit_accuracy=round(reading.accuracy(job), 4))
                break


def inspect_png(path: Path, outputs_dir: Path | None = None) -> dict[str, Any]:
    """What a PNG says about itself: metadata, the invisible fingerprint and the job it matches,
    and whether the visible mark is there. Works on exported files, offline, with no key."""
    data = _read(Path(path), "image")
    if data[:4] == envelope.MAGIC:
        raise FormatError(f"{path} is an encrypted output; inspect reads exported PNGs: run "
                          f"`sai export JOB -o FILE.png` first, or `sai verify {path}`", field="png", path=str(path))
    try:
        rgb, text = read_png(data)
    except ValueError as exc:
        raise FormatError(f"{path}: {exc}", field="png", path=str(path)) from None
    meta = sai_metadata(text)
    strength = int(meta.get("invisible_strength") or watermark.DEFAULT_STRENGTH)
    invisible = watermark.report(rgb, strength)
    invisible.update(matched_job=None, match_source=None, bit_accuracy=None)
    meta_job = meta.get("job_id")
    if meta_job:
        invisible["expected_fingerprint"] = watermark.fingerprint(meta_job).hex()
    if invisible["method"] == watermark.MARK_NAMES["robust"]:
        if meta_job and invisible["fingerprint"] == invisible["expected_fingerprint"]:
            invisible.update(matched_job=meta_job, match_source="png metadata", bit_accuracy=1.0)
        elif (job := _candidates(outputs_dir).get(invisible["fingerprint"])) is not None:
            invisible.update(matched_job=job, match_source=f"manifest in {outputs_dir}", bit_accuracy=1.0)
    elif invisible["fingerprint"]:
        _match_legacy(invisible, watermark.read_invisible(rgb, strength), meta_job, outputs_dir)
    fields = {k: v for k, v in meta.items() if k not in ("visible_mark",)}
    if "params" in fields:
        try:
            fields["params"] = json.loads(fields["params"])
        except ValueError:
            pass
    return {"file": str(path), "width": int(rgb.shape[1]), "height": int(rgb.shape[0]),
            "sha256": sha256_hex(data), "metadata": fields, "invisible": invisible,
            "visible": _visible_report(rgb, meta)}
