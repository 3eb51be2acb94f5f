"""KeyStore: creation with tight modes, sealing, wrong passphrase, rotation, interrupted rotation."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from daemon import config
from daemon.crypto import KeyPermissionError, KeyStoreError, UnknownKeyError, WrongPassphraseError, envelope
from daemon.crypto.keys import KeyStore, load_public_keys, signing_kid_of
from daemon.crypto.passphrase import PassphraseSources
from tests.outputs.out_helpers import keys_dir, keystore  # noqa: F401  (pytest fixtures)


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_created_on_first_start_with_tight_modes(keys_dir: Path) -> None:
    old = os.umask(0o022)
    try:
        store = KeyStore.open(keys_dir)
    finally:
        os.umask(old)
    assert mode(keys_dir) == 0o700 and mode(keys_dir / "kek") == 0o700
    kek = keys_dir / "kek" / f"{store.current_kek_id}.key"
    assert kek.read_bytes() == store.kek(store.current_kek_id) and len(kek.read_bytes()) == 32
    for path in [kek, keys_dir / "signing.key", keys_dir / "signing.pub.pem", keys_dir / "keys.json",
                 keys_dir / f"signing-{store.signing_kid}.pub.pem"]:
        assert mode(path) == 0o600, path
    assert isinstance(store.signing_key, Ed25519PrivateKey)
    assert store.signing_kid == signing_kid_of(store.signing_key.public_key())
    assert not store.sealed


def test_reopen_gives_the_same_keys(keys_dir: Path) -> None:
    first = KeyStore.open(keys_dir)
    again = KeyStore.open(keys_dir)
    assert again.current_kek_id == first.current_kek_id and again.signing_kid == first.signing_kid
    assert again.kek(again.current_kek_id) == first.kek(first.current_kek_id)
    assert list(load_public_keys(keys_dir)) == [first.signing_kid]


def test_sealed_store(keys_dir: Path) -> None:
    store = KeyStore.open(keys_dir, "correct horse", scrypt_log2_n=15)
    assert store.sealed and KeyStore.is_sealed(keys_dir)
    kek = store.kek(store.current_kek_id)
    files = list((keys_dir / "kek").iterdir())
    assert [f.name for f in files] == [f"{store.current_kek_id}.key.sealed"]
    assert kek not in files[0].read_bytes()
    assert not (keys_dir / "signing.key").exists() and (keys_dir / "signing.key.sealed").exists()
    blob = envelope.encrypt(b"secret", "job-1", "text/plain", store)
    again = KeyStore.open(keys_dir, "correct horse")
    assert envelope.decrypt(blob, again)[1] == b"secret"
    assert again.signing_kid == store.signing_kid


def test_wrong_or_missing_passphrase(keys_dir: Path) -> None:
    KeyStore.open(keys_dir, "correct horse", scrypt_log2_n=15)
    with pytest.raises(WrongPassphraseError, match="wrong passphrase") as caught:
        KeyStore.open(keys_dir, "battery staple")
    assert caught.value.field == "passphrase"
    with pytest.raises(WrongPassphraseError, match="SAI_PASSPHRASE"):
        KeyStore.open(keys_dir)


def test_passphrase_for_unsealed_store_is_refused(keys_dir: Path) -> None:
    KeyStore.open(keys_dir)
    with pytest.raises(KeyStoreError, match="not sealed"):
        KeyStore.open(keys_dir, "something")


def test_loose_modes_are_refused(keys_dir: Path) -> None:
    store = KeyStore.open(keys_dir)
    kek = keys_dir / "kek" / f"{store.current_kek_id}.key"
    os.chmod(kek, 0o644)
    with pytest.raises(KeyPermissionError, match="chmod 600"):
        KeyStore.open(keys_dir)
    os.chmod(kek, 0o600)
    os.chmod(keys_dir, 0o755)
    with pytest.raises(KeyPermissionError, match="chmod 700"):
        KeyStore.open(keys_dir)


def test_unknown_and_hostile_kid(keystore: KeyStore) -> None:
    with pytest.raises(UnknownKeyError, match="not in"):
        keystore.kek("20200101-000000000000")
    with pytest.raises(UnknownKeyError, match="not a valid key id"):
        keystore.kek("../signing")
    with pytest.raises(UnknownKeyError):
        keystore.public_key("ed25519-0000000000000000")


@pytest.mark.parametrize("sealed", [False, True])
def test_rotate(keys_dir: Path, sealed: bool) -> None:
    store = KeyStore.open(keys_dir, "pw" if sealed else None, scrypt_log2_n=15)
    old_kek, old_sig = store.current_kek_id, store.signing_kid
    old_pub = store.signing_key.public_key()
    new_kek, new_sig = store.rotate()
    assert (new_kek, new_sig) == (store.current_kek_id, store.signing_kid)
    assert new_kek != old_kek and new_sig != old_sig
    assert store.previous_signing_kid == old_sig and store.previous_signing_key is not None
    assert set(store.kek_ids()) == {old_kek, new_kek}
    assert store.kek(old_kek)  # kept: old files stay readable
    assert set(load_public_keys(keys_dir)) == {old_sig, new_sig}
    assert store.public_key(old_sig).public_bytes_raw() == old_pub.public_bytes_raw()
    assert (keys_dir / "signing.pub.pem").read_bytes() == (keys_dir / f"signing-{new_sig}.pub.pem").read_bytes()
    for path in keys_dir.rglob("*"):
        assert mode(path) == (0o700 if path.is_dir() else 0o600), path
    reopened = KeyStore.open(keys_dir, "pw" if sealed else None)
    assert (reopened.current_kek_id, reopened.signing_kid) == (new_kek, new_sig)


@pytest.mark.parametrize("committed", [False, True])
def test_interrupted_rotation_is_resolved_at_open(keys_dir: Path, committed: bool, monkeypatch) -> None:
    store = KeyStore.open(keys_dir)
    old_sig = store.signing_kid
    real_replace = os.replace

    def crash(src, dst):  # the crash: after keys.json (or before it), before signing.key is swapped
        if str(src).endswith("signing.key.next"):
            raise SystemExit("power cut")
        return real_replace(src, dst)

    if not committed:
        monkeypatch.setattr(store, "_write_meta", lambda: (_ for _ in ()).throw(SystemExit("power cut")))
    monkeypatch.setattr(os, "replace", crash)
    with pytest.raises(SystemExit):
        store.rotate()
    monkeypatch.undo()
    assert (keys_dir / "signing.key.next").exists()
    reopened = KeyStore.open(keys_dir)
    assert not (keys_dir / "signing.key.next").exists()
    if committed:
        assert reopened.signing_kid != old_sig
    else:
        assert reopened.signing_kid == old_sig


def test_resolve_passphrase(keys_dir: Path) -> None:
    assert PassphraseSources().resolve(keys_dir, seal_new=False) is None
    with pytest.raises(WrongPassphraseError, match="no passphrase"):
        PassphraseSources().resolve(keys_dir, seal_new=True, interactive=False)
    environ = {"SAI_PASSPHRASE": "pw", "HOME": "/root"}
    sources = PassphraseSources.take(environ)
    assert environ == {"HOME": "/root"} and "pw" not in repr(sources)
    assert sources.resolve(keys_dir, seal_new=True) == "pw"
    KeyStore.open(keys_dir, "pw", scrypt_log2_n=15)
    assert sources.resolve(keys_dir) == "pw"
    with pytest.raises(WrongPassphraseError):
        PassphraseSources().resolve(keys_dir, interactive=False)


@pytest.mark.parametrize("log2_n", [1, -3, 14, 23])
def test_a_weak_or_absurd_scrypt_cost_is_refused(keys_dir: Path, tmp_path: Path, log2_n: int) -> None:
    with pytest.raises(KeyStoreError, match=f"keys.scrypt_log2_n = {log2_n}: must be an integer from 15"):
        KeyStore.open(keys_dir, "pw", scrypt_log2_n=log2_n)
    assert not (keys_dir / "keys.json").exists()
    bad = tmp_path / "bad.toml"
    bad.write_text(f"[keys]\nscrypt_log2_n = {log2_n}\n")
    with pytest.raises(config.ConfigError) as info:
        config.load(bad, environ={}, system_file=None)
    assert info.value.key == "keys.scrypt_log2_n" and "from 15" in info.value.reason


def test_a_key_file_replaced_by_a_symlink_is_not_read_through(keys_dir: Path, tmp_path: Path) -> None:
    store = KeyStore.open(keys_dir)
    kek = keys_dir / "kek" / f"{store.current_kek_id}.key"
    elsewhere = tmp_path / "elsewhere.key"
    elsewhere.write_bytes(os.urandom(32))
    elsewhere.chmod(0o600)
    kek.unlink()
    kek.symlink_to(elsewhere)
    with pytest.raises(PermissionError, match=f"{kek} is a symbolic link"):
        KeyStore.open(keys_dir)
