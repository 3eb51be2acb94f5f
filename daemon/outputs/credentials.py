"""C2PA Content Credentials embedded in every output PNG (docs/provenance.md).

`embed_credentials` takes the finished PNG bytes (all pixel changes done) and returns them with a
C2PA manifest in a `caBX` chunk, signed with Ed25519 by the installation's signing certificate
(daemon.crypto.certs). The pipeline hashes and encrypts what comes back. The manifest says:

- claim generator "Secure AI Studio" and its version;
- `c2pa.actions`: `c2pa.created`, digitalSourceType trainedAlgorithmicMedia, the model as
  software agent;
- `org.secure-ai-studio.output`: job id, image index, model name, weights SHA-256.

Never the prompt, the negative prompt or the user: a C2PA manifest is public by design. No
thumbnail (it would add ~70 ms and ~0.9 MB per 512² image). The private key stays in the key
store: c2pa calls back into `ContentCredentials.signing()`'s function with the bytes to sign.

`read_credentials` reads a file with c2pa's own Reader, offline (no remote manifest fetch, no
OCSP), with the given CA certificates as the only trust anchors.
"""

from __future__ import annotations

import io
import json
import threading
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from daemon import __version__

if TYPE_CHECKING:
    import c2pa  # type: ignore[import-untyped]

    from daemon.crypto.keys import KeyStore

GENERATOR = "Secure AI Studio"
SOURCE_TYPE = "http://cv.iptc.org/newscodes/digitalsourcetype/trainedAlgorithmicMedia"
ASSERTION = "org.secure-ai-studio.output"
_NO_FETCH = {"remote_manifest_fetch": False, "ocsp_fetch": False}
OFFLINE: dict[str, Any] = {"verify": _NO_FETCH, "builder": {"thumbnail": {"enabled": False}}}
SIGNING: dict[str, Any] = {**OFFLINE, "verify": {**_NO_FETCH, "verify_after_sign": False}}
"""c2pa re-reads what it signed by default (~0.3 ms at 512²); the profile is fixed in code and
tests/outputs/test_c2pa.py reads real outputs, so the daemon skips that second reading."""


@dataclass(frozen=True)
class Provenance:
    """What an output's C2PA manifest states about it: nothing that names a person or a prompt."""

    job_id: str
    index: int
    model_id: str
    weights_sha256: str


def manifest_definition(what: Provenance) -> dict[str, Any]:
    agent: dict[str, str] = {"name": what.model_id or "unknown model"}
    if what.weights_sha256:
        agent["version"] = what.weights_sha256[:16]
    return {
        "claim_generator_info": [{"name": GENERATOR, "version": __version__}],
        "title": f"{what.job_id}-{what.index}.png",
        "format": "image/png",
        "assertions": [
            {"label": "c2pa.actions", "data": {"actions": [
                {"action": "c2pa.created", "digitalSourceType": SOURCE_TYPE, "softwareAgent": agent}]}},
            {"label": ASSERTION, "data": {"job_id": what.job_id, "index": what.index, "model": what.model_id,
                                          "weights_sha256": what.weights_sha256 or None}},
        ],
    }


class _Signing:
    """One c2pa Context for the process, and one Signer per signing certificate. c2pa objects are
    used under a lock: the daemon's thread pool may write several outputs at once, and signing
    takes a few milliseconds."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.context: c2pa.Context | None = None
        self.signer: tuple[str, c2pa.Signer] | None = None

    def sign(self, png: bytes, definition: dict[str, Any], keystore: KeyStore) -> bytes:
        import c2pa

        cert_id, chain, sign = keystore.c2pa.signing()
        with self.lock:
            if self.context is None:
                self.context = c2pa.Context(c2pa.Settings.from_dict(SIGNING))
            if self.signer is None or self.signer[0] != cert_id:
                self.signer = (cert_id, c2pa.Signer.from_callback(sign, c2pa.C2paSigningAlg.ED25519, chain, None))
            out = io.BytesIO()
            c2pa.Builder(definition, self.context).sign(self.signer[1], "image/png", io.BytesIO(png), out)
        return out.getvalue()


_SIGNING = _Signing()


def embed_credentials(png: bytes, what: Provenance, keystore: KeyStore) -> bytes:
    """`png` with a signed C2PA manifest embedded; the pixels and other chunks are unchanged."""
    return _SIGNING.sign(png, manifest_definition(what), keystore)


@dataclass(frozen=True)
class CredentialsReport:
    """A file's C2PA reading: `state` is Trusted, Valid, Invalid, or None when it has no manifest."""

    state: str | None
    codes: dict[str, list[str]]
    manifest: dict[str, Any]

    @property
    def failures(self) -> list[str]:
        return self.codes.get("failure", [])


def read_credentials(data: bytes, anchors_pem: str | None = None, mime: str = "image/png") -> CredentialsReport:
    """Read and validate the C2PA manifest of `data` offline; `anchors_pem` replaces the built-in
    trust anchors (our CA certificates: `sai ca export`)."""
    import c2pa

    settings: dict[str, Any] = {**OFFLINE}
    if anchors_pem:
        settings["trust"] = {"trust_anchors": anchors_pem}
    context = c2pa.Context(c2pa.Settings.from_dict(settings))
    try:
        reader = c2pa.Reader.try_create(mime, io.BytesIO(data), None, context)
    except c2pa.C2paError as exc:
        return CredentialsReport(None, {"failure": [f"unreadable: {exc}"]}, {})
    if reader is None:
        return CredentialsReport(None, {}, {})
    with reader:
        results = reader.get_validation_results() or {}
        state = str(reader.get_validation_state())
        manifest = json.loads(reader.json())
    active = results.get("activeManifest", {}) if isinstance(results, dict) else {}
    codes = {kind: [item["code"] for item in active.get(kind, [])] for kind in ("success", "informational", "failure")}
    return CredentialsReport(state, codes, manifest)
