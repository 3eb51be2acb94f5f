"""Manifests: canonical JSON describing one output, signed with Ed25519 over the file's exact bytes.

`<job>-<n>.manifest.json` holds the fields below (docs/formats.md); `<job>-<n>.manifest.sig` is
the raw 64-byte signature, checkable with
`openssl pkeyutl -verify -pubin -inkey signing.pub.pem -rawin -in X.manifest.json -sigfile X.manifest.sig`.

The encrypted file is described twice: `sai_sha256`/`sai_size` (the whole file as first written)
and `aad_sha256` + `ciphertext_sha256` (the parts key rotation never changes). A file whose whole
hash differs still verifies when it is the same ciphertext under the same protected header with
the data key re-wrapped, so manifests never need re-signing after a rotation.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from daemon.crypto import HashMismatchError, ManifestError, OutputError, SignatureError, UnknownKeyError, envelope

FORMAT = "sai-manifest/1"
JOB_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")
SIGNATURE_LEN = 64
REQUIRED: dict[str, type | tuple[type, ...]] = {
    "format": str, "job_id": str, "index": int, "file": str, "params": dict, "prompt_sha256": str,
    "model_id": str, "weights_sha256": str, "seed": (int, type(None)), "png_sha256": str, "png_size": int,
    "sai_sha256": str, "sai_size": int, "aad_sha256": str, "ciphertext_sha256": str, "kid": str,
    "signing_kid": str, "created_at": str, "fingerprint": str,
}


def output_paths(out_dir: Path, job_id: str, index: int) -> tuple[Path, Path, Path]:
    """(<job>-<n>.png.sai, <job>-<n>.manifest.json, <job>-<n>.manifest.sig)."""
    if not JOB_ID_RE.match(job_id) or ".." in job_id:
        raise OutputError(f"job id {job_id!r} cannot name an output file", field="job_id")
    if index < 0:
        raise OutputError(f"image index {index} must be 0 or more", field="index")
    stem = Path(out_dir) / f"{job_id}-{index}"
    return (stem.with_name(stem.name + ".png.sai"), stem.with_name(stem.name + ".manifest.json"),
            stem.with_name(stem.name + ".manifest.sig"))


def sha256_hex(data: bytes | memoryview) -> str:
    return hashlib.sha256(data).hexdigest()


def manifest_bytes(fields: Mapping[str, Any]) -> bytes:
    """Canonical form: keys sorted, no insignificant whitespace, UTF-8, one trailing newline."""
    return json.dumps(dict(fields), sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode("utf-8") + b"\n"


def sign(data: bytes, key: Ed25519PrivateKey) -> bytes:
    return key.sign(data)


def parse_manifest(data: bytes) -> dict[str, Any]:
    """The manifest as a dict; ManifestError naming the first missing or ill-typed field."""
    try:
        manifest = json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ManifestError(f"manifest is not valid UTF-8 JSON: {exc}") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise ManifestError(f"not a {FORMAT} manifest")
    for name, kind in REQUIRED.items():
        if name not in manifest:
            raise ManifestError(f"manifest field {name!r} is missing", field=name)
        value = manifest[name]
        if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
            raise ManifestError(f"manifest field {name!r} has the wrong type", field=name)
    return manifest


def verify_signature(data: bytes, signature: bytes, public_keys: Mapping[str, Ed25519PublicKey]) -> dict[str, Any]:
    """Check the signature with the key the manifest names; return the parsed manifest."""
    manifest = parse_manifest(data)
    kid = manifest["signing_kid"]
    key = public_keys.get(kid)
    if key is None:
        raise UnknownKeyError(f"manifest is signed by key {kid!r}, which is not among the known public keys "
                              f"({', '.join(sorted(public_keys)) or 'none'}); pass the keys directory that holds "
                              f"signing-{kid}.pub.pem", field="signing_kid")
    if len(signature) != SIGNATURE_LEN:
        raise SignatureError(f"signature is {len(signature)} bytes, an Ed25519 signature is {SIGNATURE_LEN}")
    try:
        key.verify(signature, data)
    except InvalidSignature:
        raise SignatureError(f"manifest signature does not verify under key {kid}: the manifest or its "
                             f"signature was modified") from None
    return manifest


def check_encrypted_file(manifest: Mapping[str, Any], blob: bytes) -> dict[str, Any]:
    """Does `blob` hold what the signed manifest describes? No key needed, nothing decrypted.

    Returns {"match": "exact" | "rewrapped", "kid": current kid}; raises HashMismatchError or a
    FormatError subclass naming what differs.
    """
    env = envelope.parse(blob)  # a damaged header is named precisely here
    if sha256_hex(blob) == manifest["sai_sha256"] and len(blob) == manifest["sai_size"]:
        match = "exact"
    else:
        if len(env.ciphertext) != manifest["png_size"] + envelope.TAG_LEN:
            raise HashMismatchError(f"encrypted file is {len(blob)} bytes and its ciphertext does not have the "
                                    f"length the manifest implies (truncated or extended)", field="length")
        if sha256_hex(env.aad) != manifest["aad_sha256"]:
            raise HashMismatchError("the protected header (alg, content_type, job_id, nonce) differs from the "
                                    "signed manifest", field="header")
        if sha256_hex(env.ciphertext) != manifest["ciphertext_sha256"]:
            raise HashMismatchError("the ciphertext or tag differs from the signed manifest", field="ciphertext")
        if env.kid == manifest["kid"]:
            raise HashMismatchError("the wrapped data key differs from the signed manifest", field="wrapped_key")
        match = "rewrapped"
    if env.job_id != manifest["job_id"]:
        raise HashMismatchError(f"encrypted file belongs to job {env.job_id!r}, the manifest to "
                                f"{manifest['job_id']!r}", field="job_id")
    return {"match": match, "kid": env.kid}
