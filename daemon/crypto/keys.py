"""The key store under `state/keys/`: key-encryption keys (KEKs), the Ed25519 signing key.

Layout (directories 0700, files 0600, see docs/formats.md "Key files"):

    keys.json               which KEK and signing key are current; seal parameters if sealed
    kek/<kid>.key           32 raw bytes (unsealed)  |  kek/<kid>.key.sealed (sealed)
    signing.key             PKCS#8 PEM, unencrypted  |  signing.key.sealed (sealed)
    signing.pub.pem         the current public key (SubjectPublicKeyInfo PEM)
    signing-<kid>.pub.pem   every public key ever current, kept so old manifests stay verifiable
    c2pa.json, c2pa-*       the C2PA CA and signing certificate (daemon.crypto.certs)

Sealed mode (daemon.crypto.sealing): one scrypt derivation of the passphrase at open gives a
sealing key; each secret key file is AES-256-GCM under it (nonce ‖ ciphertext ‖ tag, AAD names the
key). Where the passphrase comes from: daemon.crypto.passphrase.

Key material never leaves this object except through `kek()` and `signing_key`; nothing here
logs or formats a key into a message.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import threading
import time
from pathlib import Path

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from daemon.crypto import KeyPermissionError, KeyStoreError, UnknownKeyError, WrongPassphraseError
from daemon.crypto.certs import ContentCredentials
from daemon.crypto.indexfile import read_index
from daemon.crypto.keyid import signing_key_id
from daemon.crypto.sealing import Sealer
from daemon.safefiles import atomic_write, ensure_dir, fsync_dir, read_nofollow

FORMAT = "sai-keys/1"
KID_RE = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
SEALED_SUFFIX = ".sealed"
PASSPHRASE_ENV = "SAI_PASSPHRASE"


def check_kid(kid: str) -> str:
    """A key id is a file name component: refuse anything that could walk out of the directory."""
    if not isinstance(kid, str) or not KID_RE.match(kid):
        raise UnknownKeyError(f"key id {kid!r} is not a valid key id (letters, digits, '-', '_'; at most 64)")
    return kid


def signing_kid_of(public_key: Ed25519PublicKey) -> str:
    """The key's id (daemon.crypto.keyid: 'ed25519-' + 16 hex digits)."""
    return signing_key_id(public_key.public_bytes_raw())


def public_pem(public_key: Ed25519PublicKey) -> bytes:
    return public_key.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)


def load_public_keys(keys_dir: Path) -> dict[str, Ed25519PublicKey]:
    """Every signing public key in `keys_dir` by key id (needs no secret; ids come from the keys)."""
    found: dict[str, Ed25519PublicKey] = {}
    for path in sorted(Path(keys_dir).glob("signing*.pub.pem")):
        try:
            key = serialization.load_pem_public_key(read_nofollow(path))
        except (OSError, ValueError) as exc:
            raise KeyStoreError(f"cannot read public key {path}: {exc}", path=str(path)) from None
        if not isinstance(key, Ed25519PublicKey):
            raise KeyStoreError(f"{path} is not an Ed25519 public key", path=str(path))
        found[signing_kid_of(key)] = key
    return found


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


class KeyStore:
    """Holds the KEKs and the signing key of one installation. Use `KeyStore.open`."""

    def __init__(self, keys_dir: Path, meta: dict, sealer: Sealer | None) -> None:
        self.keys_dir = keys_dir
        self._meta = meta
        self._sealer = sealer
        self._keks: dict[str, bytes] = {}
        self._signing_key: Ed25519PrivateKey | None = None
        self._lock = threading.Lock()  # rotate() vs. signer() from the daemon's thread pool
        self.previous_signing_key: Ed25519PrivateKey | None = None
        self.previous_signing_kid: str | None = None
        self._c2pa: ContentCredentials | None = None

    # --- opening and creating ---------------------------------------------------------------

    @classmethod
    def is_sealed(cls, keys_dir: Path) -> bool | None:
        """True/False for an existing store, None when none has been created yet."""
        meta_path = Path(keys_dir) / "keys.json"
        if not meta_path.exists():
            return None
        return bool(cls._read_meta(meta_path).get("sealed"))

    @classmethod
    def open(cls, keys_dir: Path, passphrase: str | None = None, *, scrypt_log2_n: int = 15) -> KeyStore:
        """Open the store in `keys_dir`, creating it on first start (sealed when a passphrase is given)."""
        keys_dir = Path(keys_dir)
        meta_path = keys_dir / "keys.json"
        if not meta_path.exists():
            return cls._create(keys_dir, passphrase, scrypt_log2_n)
        cls._check_modes(keys_dir)
        meta = cls._read_meta(meta_path)
        sealer: Sealer | None = None
        if meta.get("sealed"):
            if passphrase is None:
                raise WrongPassphraseError(
                    f"the keys in {keys_dir} are sealed: set {PASSPHRASE_ENV} or enter the passphrase at start-up")
            sealer = Sealer.reopen(passphrase, meta["seal"], keys_dir)
        elif passphrase is not None:
            raise KeyStoreError(f"the keys in {keys_dir} are not sealed, but a passphrase was given; "
                                f"unset {PASSPHRASE_ENV} or create a new sealed key store", field="passphrase")
        store = cls(keys_dir, meta, sealer)
        store._finish_interrupted_rotation()
        store.kek(store.current_kek_id)  # fail now, not on the first image
        store._load_signing_key()
        store._load_previous_signing_key()
        store._repair_current_public_key()
        store._c2pa = ContentCredentials.open(keys_dir, store)
        return store

    @classmethod
    def _create(cls, keys_dir: Path, passphrase: str | None, scrypt_log2_n: int) -> KeyStore:
        ensure_dir(keys_dir, 0o700)
        ensure_dir(keys_dir / "kek", 0o700)
        meta: dict = {"format": FORMAT, "sealed": passphrase is not None, "seal": None, "created_at": _now()}
        sealer = None
        if passphrase is not None:
            sealer, meta["seal"] = Sealer.create(passphrase, scrypt_log2_n)
        store = cls(keys_dir, meta, sealer)
        kek_id = store._new_kek()
        signing = Ed25519PrivateKey.generate()
        skid = store._write_signing_key(signing, keys_dir / store._signing_name())
        meta.update(current_kek=kek_id, signing_kid=skid)
        store._write_meta()
        store._signing_key = signing
        store._repair_current_public_key()
        store._c2pa = ContentCredentials.open(keys_dir, store)
        return store

    @staticmethod
    def _read_meta(meta_path: Path) -> dict:
        return read_index(meta_path, FORMAT, "key index")

    @staticmethod
    def _check_modes(keys_dir: Path) -> None:
        paths = [keys_dir, keys_dir / "kek", *keys_dir.glob("*.key*"), *(keys_dir / "kek").glob("*.key*")]
        for path in paths:
            try:
                mode = path.stat().st_mode & 0o777
            except FileNotFoundError:
                continue
            if mode & 0o077:
                want = "700" if path.is_dir() else "600"
                raise KeyPermissionError(
                    f"{path} is mode {mode:03o}, readable by other users; run: chmod {want} {path}",
                    path=str(path))

    # --- public surface ---------------------------------------------------------------------

    @property
    def current_kek_id(self) -> str:
        return self._meta["current_kek"]

    @property
    def signing_kid(self) -> str:
        return self._meta["signing_kid"]

    @property
    def signing_key(self) -> Ed25519PrivateKey:
        assert self._signing_key is not None
        return self._signing_key

    def signer(self) -> tuple[str, Ed25519PrivateKey]:
        """(signing key id, signing key), read together so a concurrent rotation cannot split them."""
        with self._lock:
            return self.signing_kid, self.signing_key

    @property
    def c2pa(self) -> ContentCredentials:
        """The C2PA CA and signing certificate, created with the store (or at the first start of a
        build that has them), sealed like the other keys."""
        assert self._c2pa is not None
        return self._c2pa

    def write_secret(self, path: Path, raw: bytes, label: bytes) -> None:
        """`raw` at `path`, or sealed under `label` at `path`.sealed when the store is sealed."""
        if self._sealer is not None:
            atomic_write(Path(str(path) + SEALED_SUFFIX), self._sealer.seal(raw, label))
        else:
            atomic_write(path, raw)

    def read_secret(self, path: Path, label: bytes) -> bytes:
        sealed_path = Path(str(path) + SEALED_SUFFIX) if self._sealer is not None else path
        try:
            data = read_nofollow(sealed_path)
            return self._sealer.unseal(data, label) if self._sealer is not None else data
        except FileNotFoundError:
            raise KeyStoreError(f"key {sealed_path} is missing; restore the key directory from backup",
                                path=str(sealed_path)) from None
        except InvalidTag:
            raise KeyStoreError(f"sealed key {sealed_path} is damaged (authentication failed)",
                                path=str(sealed_path)) from None

    def remove_secret(self, path: Path) -> None:
        Path(str(path) + SEALED_SUFFIX if self._sealer is not None else path).unlink(missing_ok=True)
        fsync_dir(self.keys_dir)

    @property
    def sealed(self) -> bool:
        return self._sealer is not None

    def kek_ids(self) -> list[str]:
        names = (p.name for p in (self.keys_dir / "kek").iterdir())
        return sorted({n.split(".", 1)[0] for n in names if n.endswith((".key", ".key" + SEALED_SUFFIX))})

    def kek(self, kid: str) -> bytes:
        """The 32-byte key-encryption key `kid`; UnknownKeyError when this store has none."""
        check_kid(kid)
        if kid in self._keks:
            return self._keks[kid]
        base = self.keys_dir / "kek" / f"{kid}.key"
        try:
            if self._sealer is not None:
                try:
                    sealed = read_nofollow(Path(str(base) + SEALED_SUFFIX))
                    key = self._sealer.unseal(sealed, b"sai-kek\0" + kid.encode())
                except InvalidTag:
                    raise KeyStoreError(f"sealed key {base}{SEALED_SUFFIX} is damaged (authentication failed)",
                                        path=str(base)) from None
            else:
                key = read_nofollow(base)
        except FileNotFoundError:
            raise UnknownKeyError(f"key-encryption key {kid!r} is not in {self.keys_dir / 'kek'}; the file was "
                                  f"made by another installation or its key was removed", path=str(base)) from None
        if len(key) != 32:
            raise KeyStoreError(f"key-encryption key {kid!r} in {base} is {len(key)} bytes, expected 32 (damaged or "
                                "truncated; restore it from backup)", path=str(base))
        self._keks[kid] = key
        return key

    def public_key(self, kid: str | None = None) -> Ed25519PublicKey:
        """The signing public key `kid` (default: current), from signing-<kid>.pub.pem."""
        if kid is None or kid == self.signing_kid:
            return self.signing_key.public_key()
        check_kid(kid)
        path = self.keys_dir / f"signing-{kid}.pub.pem"
        try:
            key = serialization.load_pem_public_key(read_nofollow(path))
        except FileNotFoundError:
            raise UnknownKeyError(f"no public key for signing key {kid!r} in {self.keys_dir}", path=str(path)) from None
        if not isinstance(key, Ed25519PublicKey) or signing_kid_of(key) != kid:
            raise KeyStoreError(f"{path} does not hold signing key {kid!r}", path=str(path))
        return key

    def public_keys(self) -> dict[str, Ed25519PublicKey]:
        return load_public_keys(self.keys_dir)

    def rotate(self) -> tuple[str, str]:
        """New current KEK and signing key; old KEKs and old public keys are kept (the C2PA signing
        certificate is renewed separately: `c2pa.rotate`, which `KeyMaintenance.rotate` calls).

        The old private signing key stays (`previous_signing_key`, and on disk as
        `signing.key.previous`) until `retire_previous_signing_key`: the audit log must announce
        the new key in an entry signed by the old one, and if the daemon dies before it has, the
        next start still holds the old key to do so. Call `daemon.outputs.pipeline.rotate_outputs`
        next to re-wrap existing files.
        """
        with self._lock:
            kek_id = self._new_kek()
            signing = Ed25519PrivateKey.generate()
            pending = self.keys_dir / (self._signing_name() + ".next")
            skid = self._write_signing_key(signing, pending)
            atomic_write(self._previous_path(), read_nofollow(self.keys_dir / self._signing_name()))
            self.previous_signing_key, self.previous_signing_kid = self._signing_key, self.signing_kid
            self._meta.update(current_kek=kek_id, signing_kid=skid, previous_signing_kid=self.signing_kid,
                              rotated_at=_now())
            self._write_meta()  # the commit point
            os.replace(pending, self.keys_dir / self._signing_name())
            fsync_dir(self.keys_dir)
            self._signing_key = signing
            self._repair_current_public_key()
        return kek_id, skid

    def retire_previous_signing_key(self) -> None:
        """The audit log has recorded the rotation: the old private signing key goes for good."""
        with self._lock:
            path = self._previous_path()
            if "previous_signing_kid" in self._meta:
                del self._meta["previous_signing_kid"]
                self._write_meta()
            if path.exists():
                path.unlink()
                fsync_dir(self.keys_dir)
            self.previous_signing_key = None

    # --- internals --------------------------------------------------------------------------

    def _previous_path(self) -> Path:
        return self.keys_dir / (self._signing_name() + ".previous")

    def _load_previous_signing_key(self) -> None:
        """The old signing key of a rotation the audit log may not have announced yet. A copy that
        keys.json does not name is from a rotation that never committed, and is removed."""
        path, kid = self._previous_path(), self._meta.get("previous_signing_kid")
        if not path.exists():
            return
        if isinstance(kid, str) and kid != self.signing_kid:
            key = self._read_signing_key(path, kid)
            if signing_kid_of(key.public_key()) == kid:
                self.previous_signing_key, self.previous_signing_kid = key, kid
                return
        path.unlink()
        fsync_dir(self.keys_dir)

    def _signing_name(self) -> str:
        return "signing.key" + (SEALED_SUFFIX if self._sealer else "")

    def _new_kek(self) -> str:
        kid = time.strftime("%Y%m%d", time.gmtime()) + "-" + secrets.token_hex(6)
        key = secrets.token_bytes(32)
        if self._sealer is not None:
            atomic_write(self.keys_dir / "kek" / f"{kid}.key{SEALED_SUFFIX}",
                         self._sealer.seal(key, b"sai-kek\0" + kid.encode()))
        else:
            atomic_write(self.keys_dir / "kek" / f"{kid}.key", key)
        self._keks[kid] = key
        return kid

    def _write_signing_key(self, key: Ed25519PrivateKey, path: Path) -> str:
        skid = signing_kid_of(key.public_key())
        atomic_write(self.keys_dir / f"signing-{skid}.pub.pem", public_pem(key.public_key()))
        if self._sealer is not None:
            raw = key.private_bytes(serialization.Encoding.Raw, serialization.PrivateFormat.Raw,
                                    serialization.NoEncryption())
            atomic_write(path, self._sealer.seal(raw, b"sai-signing\0" + skid.encode()))
        else:
            atomic_write(path, key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                                 serialization.NoEncryption()))
        return skid

    def _read_signing_key(self, path: Path, kid: str | None) -> Ed25519PrivateKey:
        data = read_nofollow(path)
        if self._sealer is None:
            try:
                key = serialization.load_pem_private_key(data, password=None)
            except ValueError:
                raise KeyStoreError(f"signing key {path} is damaged: not a readable PEM private key; restore "
                                    "the key directory from backup", path=str(path)) from None
            if not isinstance(key, Ed25519PrivateKey):
                raise KeyStoreError(f"{path} is not an Ed25519 private key", path=str(path))
            return key
        try:
            raw = self._sealer.unseal(data, b"sai-signing\0" + (kid or self.signing_kid).encode())
            return Ed25519PrivateKey.from_private_bytes(raw)
        except (InvalidTag, ValueError):
            raise KeyStoreError(f"sealed signing key {path} is damaged (authentication failed)",
                                path=str(path)) from None

    def _load_signing_key(self) -> None:
        path = self.keys_dir / self._signing_name()
        try:
            key = self._read_signing_key(path, self.signing_kid)
        except FileNotFoundError:
            raise KeyStoreError(f"signing key {path} is missing", path=str(path)) from None
        if signing_kid_of(key.public_key()) != self.signing_kid:
            raise KeyStoreError(f"{path} does not hold the current signing key {self.signing_kid} named in "
                                f"keys.json; restore the key directory from backup", path=str(path))
        self._signing_key = key

    def _finish_interrupted_rotation(self) -> None:
        """A crash during `rotate` left signing.key.next: finish the swap if keys.json committed it."""
        pending = self.keys_dir / (self._signing_name() + ".next")
        if not pending.exists():
            return
        try:
            key = self._read_signing_key(pending, self.signing_kid)
            committed = signing_kid_of(key.public_key()) == self.signing_kid
        except (KeyStoreError, ValueError):
            committed = False
        if committed:
            os.replace(pending, self.keys_dir / self._signing_name())
        else:
            pending.unlink()  # keys.json never named it: the rotation did not happen
        fsync_dir(self.keys_dir)

    def _repair_current_public_key(self) -> None:
        pem = public_pem(self.signing_key.public_key())
        path = self.keys_dir / "signing.pub.pem"
        if not path.exists() or read_nofollow(path) != pem:
            atomic_write(path, pem)
        own = self.keys_dir / f"signing-{self.signing_kid}.pub.pem"
        if not own.exists():
            atomic_write(own, pem)

    def _write_meta(self) -> None:
        atomic_write(self.keys_dir / "keys.json", json.dumps(self._meta, indent=1, sort_keys=True).encode() + b"\n")
