"""The installation's C2PA certificates: a CA and the Ed25519 signing certificate it issues.

Both live in the key store directory beside the other keys (docs/formats.md "Key files") and are
sealed with them when the store is sealed; the index `c2pa.json` names the current pair and every
CA this installation ever had (their certificates stay, so `sai ca export` can hand them all out):

    c2pa.json                     {"format", "ca", "signing", "cas": [...]}: the commit point
    c2pa-ca-<id>.pem              a CA certificate (public; every one is kept)
    c2pa-ca-<id>.key[.sealed]     the current CA's private key (32 raw bytes, or sealed)
    c2pa-signing-<id>.pem         a signing certificate (public; every one is kept)
    c2pa-signing-<id>.key[.sealed]  the current signing key

Lifetimes (docs/provenance.md "Certificate lifetimes"). No timestamp authority is reachable
offline, so a C2PA reader judges an image by its signing certificate's validity *today*: once
that certificate expires, every image it signed reads `Invalid`. Renewal cannot repair signed
images, so the lifetimes are long and renewal comes early: a signing certificate lasts 20 years
and is replaced when 10 are left, so each image stays verifiable for at least 10 years after it
was made. The CA lasts 50 years and is replaced when it could no longer cover a full signing
certificate. The private keys never leave this object: `sign` is what C2PA signing calls back.
"""

from __future__ import annotations

import hashlib
import json
import secrets
import threading
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Protocol

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from daemon.crypto import KeyStoreError
from daemon.crypto.indexfile import read_index
from daemon.safefiles import atomic_write, fsync_dir, read_nofollow

FORMAT = "sai-c2pa/1"
INDEX = "c2pa.json"
ORGANIZATION = "Secure AI Studio"
CLOCK_SKEW = timedelta(minutes=5)

Event = tuple[str, str, dict[str, Any]]
"""(audit action, subject, details) of a certificate event, for the audit log."""


@dataclass(frozen=True)
class Lifetimes:
    """How long certificates last and when they are replaced (days)."""

    ca_days: int = 50 * 365 + 12
    signing_days: int = 20 * 365 + 5
    renew_days_left: int = 10 * 365 + 2

    def __post_init__(self) -> None:
        if not 0 < self.renew_days_left < self.signing_days <= self.ca_days:
            raise ValueError("certificate lifetimes must satisfy 0 < renew_days_left < signing_days <= ca_days")


class SecretFiles(Protocol):
    """What the key store lends: writing and reading a secret, sealed when the store is sealed."""

    def write_secret(self, path: Path, raw: bytes, label: bytes) -> None: ...

    def read_secret(self, path: Path, label: bytes) -> bytes: ...

    def remove_secret(self, path: Path) -> None: ...


def cert_id(cert: x509.Certificate) -> str:
    """`x509-` + the first 16 hex digits of the SHA-256 of the certificate's DER."""
    return "x509-" + hashlib.sha256(cert.public_bytes(serialization.Encoding.DER)).hexdigest()[:16]


def cert_pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def _rfc3339(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, ORGANIZATION),
                      x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, "Content Credentials"),
                      x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _key_usage(*, signature: bool = False, cert_sign: bool = False) -> x509.KeyUsage:
    return x509.KeyUsage(digital_signature=signature, content_commitment=False, key_encipherment=False,
                         data_encipherment=False, key_agreement=False, key_cert_sign=cert_sign,
                         crl_sign=cert_sign, encipher_only=False, decipher_only=False)


def make_ca(key: Ed25519PrivateKey, now: datetime, days: int) -> x509.Certificate:
    """A self-signed root: CA, no intermediates below it, signs certificates and CRLs only."""
    name = _name(f"Secure AI Studio installation CA {secrets.token_hex(4)}")
    return (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - CLOCK_SKEW).not_valid_after(now + timedelta(days=days))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(_key_usage(cert_sign=True), critical=True)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
            .sign(key, None))


def make_signing_cert(key: Ed25519PrivateKey, ca: x509.Certificate, ca_key: Ed25519PrivateKey, now: datetime,
                      days: int) -> x509.Certificate:
    """The profile c2pa accepts (FACTS.md): end entity, digitalSignature only, EKU emailProtection,
    and an AuthorityKeyIdentifier (which `cryptography` does not add by itself)."""
    not_after = min(now + timedelta(days=days), ca.not_valid_after_utc)
    ski = ca.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    return (x509.CertificateBuilder().subject_name(_name("Secure AI Studio output signer"))
            .issuer_name(ca.subject).public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - CLOCK_SKEW).not_valid_after(not_after)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(_key_usage(signature=True), critical=True)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.EMAIL_PROTECTION]), critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ski), critical=False)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
            .sign(ca_key, None))


def _raw(key: Ed25519PrivateKey) -> bytes:
    return key.private_bytes(serialization.Encoding.Raw, serialization.PrivateFormat.Raw,
                             serialization.NoEncryption())


def _same_key(key: Ed25519PrivateKey, cert: x509.Certificate) -> bool:
    raw = serialization.Encoding.Raw, serialization.PublicFormat.Raw
    return key.public_key().public_bytes(*raw) == cert.public_key().public_bytes(*raw)


class ContentCredentials:
    """The current CA and signing certificate of one key store. Use `ContentCredentials.open`."""

    def __init__(self, keys_dir: Path, secret_files: SecretFiles, lifetimes: Lifetimes,
                 now: Callable[[], datetime]) -> None:
        self.keys_dir = keys_dir
        self.lifetimes = lifetimes
        self._files = secret_files
        self._now = now
        self._lock = threading.Lock()
        self._index: dict[str, Any] = {}
        self._ca: x509.Certificate | None = None
        self._ca_key: Ed25519PrivateKey | None = None
        self._leaf: x509.Certificate | None = None
        self._leaf_key: Ed25519PrivateKey | None = None
        self._events: list[Event] = []
        self.on_event: Callable[[], object] | None = None
        """Called (from any thread) after an event was queued; the daemon then records `take_events()`."""

    @classmethod
    def open(cls, keys_dir: Path, secret_files: SecretFiles, lifetimes: Lifetimes | None = None,
             now: Callable[[], datetime] = lambda: datetime.now(UTC)) -> ContentCredentials:
        """Load the certificates, creating them on first start and renewing what is due."""
        creds = cls(Path(keys_dir), secret_files, lifetimes or Lifetimes(), now)
        with creds._lock:
            if (creds.keys_dir / INDEX).exists():
                creds._load()
            else:
                creds._new_ca("first start")
            creds._renew_due()
        return creds

    # --- public surface ---------------------------------------------------------------------

    def signing(self) -> tuple[str, str, Callable[[bytes], bytes]]:
        """(signing certificate id, chain PEM leaf first, sign function), renewing first when due.
        The function signs with the private key held here; only signatures leave."""
        with self._lock:
            self._renew_due()
            assert self._leaf is not None and self._ca is not None and self._leaf_key is not None
            key = self._leaf_key
            chain = (cert_pem(self._leaf) + cert_pem(self._ca)).decode("ascii")
            return cert_id(self._leaf), chain, key.sign

    def rotate(self, reason: str = "keys.rotate") -> str:
        """A new signing key and certificate from the same CA (old images keep verifying: they
        carry their own certificate, issued by the CA every reader trusts). Returns its id."""
        with self._lock:
            return self._new_leaf(reason)

    def ca_certificates(self) -> list[x509.Certificate]:
        """Every CA this installation had that has not expired, the current one first."""
        with self._lock:
            assert self._ca is not None
            current, now = self._ca, self._now()
            found = [current]
            for ca_id in reversed(self._index.get("cas", [])):
                cert = self._read_cert(f"c2pa-ca-{ca_id}.pem")
                if cert_id(cert) != cert_id(current) and cert.not_valid_after_utc > now:
                    found.append(cert)
            return found

    def ca_pem(self) -> bytes:
        return b"".join(cert_pem(cert) for cert in self.ca_certificates())

    def info(self) -> dict[str, Any]:
        with self._lock:
            assert self._ca is not None and self._leaf is not None
            renew_at = self._leaf.not_valid_after_utc - timedelta(days=self.lifetimes.renew_days_left)
            return {"ca_id": cert_id(self._ca), "ca_subject": self._ca.subject.rfc4514_string(),
                    "ca_not_after": _rfc3339(self._ca.not_valid_after_utc),
                    "signing_id": cert_id(self._leaf), "signing_not_after": _rfc3339(self._leaf.not_valid_after_utc),
                    "signing_renew_at": _rfc3339(renew_at)}

    def take_events(self) -> list[Event]:
        """The certificate events not yet audited, oldest first (each is returned once)."""
        with self._lock:
            events, self._events = self._events, []
            return events

    # --- internals (callers hold the lock) --------------------------------------------------

    def _renew_due(self) -> None:
        assert self._ca is not None and self._leaf is not None
        now, life = self._now(), self.lifetimes
        if self._ca.not_valid_after_utc - now < timedelta(days=life.signing_days):
            self._new_ca("renewal: the CA could no longer cover a full signing certificate")
        elif self._leaf.not_valid_after_utc - now < timedelta(days=life.renew_days_left):
            self._new_leaf(f"renewal: fewer than {life.renew_days_left} days left")

    def _new_ca(self, reason: str) -> None:
        key = Ed25519PrivateKey.generate()
        ca = make_ca(key, self._now(), self.lifetimes.ca_days)
        ca_id = cert_id(ca)
        self._files.write_secret(self.keys_dir / f"c2pa-ca-{ca_id}.key", _raw(key), b"sai-c2pa-ca\0" + ca_id.encode())
        atomic_write(self.keys_dir / f"c2pa-ca-{ca_id}.pem", cert_pem(ca))
        old_ca = self._index.get("ca")
        self._index["cas"] = [*self._index.get("cas", []), ca_id]
        self._ca, self._ca_key = ca, key
        self._queue("c2pa.ca.create", ca_id, {"reason": reason, "subject": ca.subject.rfc4514_string(),
                                              "not_after": _rfc3339(ca.not_valid_after_utc), "previous": old_ca})
        self._new_leaf(reason)
        if old_ca:
            self._files.remove_secret(self.keys_dir / f"c2pa-ca-{old_ca}.key")

    def _new_leaf(self, reason: str) -> str:
        assert self._ca is not None and self._ca_key is not None
        key = Ed25519PrivateKey.generate()
        leaf = make_signing_cert(key, self._ca, self._ca_key, self._now(), self.lifetimes.signing_days)
        leaf_id, ca_id = cert_id(leaf), cert_id(self._ca)
        self._files.write_secret(self.keys_dir / f"c2pa-signing-{leaf_id}.key", _raw(key),
                                 b"sai-c2pa-signing\0" + leaf_id.encode())
        atomic_write(self.keys_dir / f"c2pa-signing-{leaf_id}.pem", cert_pem(leaf))
        old_leaf = self._index.get("signing")
        self._index.update(format=FORMAT, ca=ca_id, signing=leaf_id)
        atomic_write(self.keys_dir / INDEX, json.dumps(self._index, indent=1, sort_keys=True).encode() + b"\n")
        fsync_dir(self.keys_dir)  # the commit point
        if old_leaf:
            self._files.remove_secret(self.keys_dir / f"c2pa-signing-{old_leaf}.key")
        self._leaf, self._leaf_key = leaf, key
        self._queue("c2pa.cert.issue", leaf_id, {"reason": reason, "ca": ca_id, "previous": old_leaf,
                                                 "not_after": _rfc3339(leaf.not_valid_after_utc)})
        return leaf_id

    def _queue(self, action: str, subject: str, details: dict[str, Any]) -> None:
        self._events.append((action, subject, details))
        if self.on_event is not None:
            self.on_event()

    def _read_cert(self, name: str) -> x509.Certificate:
        path = self.keys_dir / name
        try:
            return x509.load_pem_x509_certificate(read_nofollow(path))
        except FileNotFoundError:
            raise KeyStoreError(f"C2PA certificate {path} is missing; restore the key directory from backup",
                                path=str(path)) from None
        except ValueError:
            raise KeyStoreError(f"C2PA certificate {path} is damaged", path=str(path)) from None

    def _read_key(self, name: str, label: bytes, cert: x509.Certificate) -> Ed25519PrivateKey:
        path = self.keys_dir / name
        try:
            key = Ed25519PrivateKey.from_private_bytes(self._files.read_secret(path, label))
        except ValueError:
            raise KeyStoreError(f"C2PA key {path} is damaged", path=str(path)) from None
        if not _same_key(key, cert):
            raise KeyStoreError(f"C2PA key {path} does not belong to its certificate; restore the key directory "
                                "from backup", path=str(path))
        return key

    def _load(self) -> None:
        index = self._index = read_index(self.keys_dir / INDEX, FORMAT, "index")
        ca_id, leaf_id = str(index["ca"]), str(index["signing"])
        self._ca = self._read_cert(f"c2pa-ca-{ca_id}.pem")
        self._ca_key = self._read_key(f"c2pa-ca-{ca_id}.key", b"sai-c2pa-ca\0" + ca_id.encode(), self._ca)
        self._leaf = self._read_cert(f"c2pa-signing-{leaf_id}.pem")
        self._leaf_key = self._read_key(f"c2pa-signing-{leaf_id}.key", b"sai-c2pa-signing\0" + leaf_id.encode(),
                                        self._leaf)
        current = {f"c2pa-ca-{ca_id}.key", f"c2pa-signing-{leaf_id}.key"}
        for stale in self.keys_dir.glob("c2pa-*.key*"):  # from an issuance that never committed
            if stale.name.removesuffix(".sealed") not in current:
                stale.unlink()
