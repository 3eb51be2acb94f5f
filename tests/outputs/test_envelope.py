"""The SAIE envelope: byte layout, AAD, fresh keys, every tampered field, truncation, re-wrap."""

from __future__ import annotations

import base64
import json
import struct

import pytest
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.keywrap import aes_key_unwrap

from daemon.crypto import (
    FormatError,
    HeaderError,
    IntegrityError,
    OutputError,
    TruncatedError,
    UnknownKeyError,
    UnwrapError,
    envelope,
)
from daemon.crypto.keys import KeyStore
from tests.outputs.out_helpers import keys_dir, keystore  # noqa: F401  (pytest fixtures)

PLAIN = b"\x89PNG fake image bytes " * 50


def split(blob: bytes) -> tuple[bytes, dict, bytes]:
    (length,) = struct.unpack(">I", blob[5:9])
    header_bytes = blob[9:9 + length]
    return header_bytes, json.loads(header_bytes), blob[9 + length:]


def test_layout_byte_for_byte(keystore: KeyStore) -> None:
    blob = envelope.encrypt(PLAIN, "job-1", "image/png", keystore)
    assert blob[:4] == b"SAIE" and blob[4] == 0x01
    header_bytes, header, rest = split(blob)
    assert set(header) == {"alg", "kid", "wrapped_key", "nonce", "job_id", "content_type"}
    assert header["alg"] == "A256GCM" and header["job_id"] == "job-1" and header["content_type"] == "image/png"
    assert header["kid"] == keystore.current_kek_id
    assert len(base64.b64decode(header["nonce"])) == 12
    assert len(base64.b64decode(header["wrapped_key"])) == 40  # RFC 3394 wrap of 32 bytes
    assert header_bytes == json.dumps(header, sort_keys=True, separators=(",", ":")).encode()
    assert len(rest) == len(PLAIN) + 16  # ciphertext then the 16-byte tag


def test_decrypts_with_plain_primitives_per_the_documented_aad(keystore: KeyStore) -> None:
    """An independent reader: unwrap with RFC 3394, AAD = SAIE prefix over the protected fields."""
    blob = envelope.encrypt(PLAIN, "job-1", "image/png", keystore)
    _, header, rest = split(blob)
    data_key = aes_key_unwrap(keystore.kek(header["kid"]), base64.b64decode(header["wrapped_key"]))
    protected = json.dumps({k: header[k] for k in ("alg", "content_type", "job_id", "nonce")},
                           sort_keys=True, separators=(",", ":")).encode()
    aad = b"SAIE\x01" + struct.pack(">I", len(protected)) + protected
    assert AESGCM(data_key).decrypt(base64.b64decode(header["nonce"]), rest, aad) == PLAIN


def test_roundtrip_and_fresh_key_and_nonce_per_file(keystore: KeyStore) -> None:
    a = envelope.encrypt(PLAIN, "job-1", "image/png", keystore)
    b = envelope.encrypt(PLAIN, "job-1", "image/png", keystore)
    ha, hb = split(a)[1], split(b)[1]
    assert ha["nonce"] != hb["nonce"] and ha["wrapped_key"] != hb["wrapped_key"]
    assert split(a)[2] != split(b)[2]
    header, plain = envelope.decrypt(a, keystore)
    assert plain == PLAIN and header["job_id"] == "job-1"


def _flip_in_field(blob: bytes, name: str) -> bytes:
    header_bytes, header, _ = split(blob)
    needle = f'"{name}":"{header[name]}"'.encode()
    at = header_bytes.index(needle) + len(name) + 4  # first character of the value
    data = bytearray(blob)
    data[9 + at] ^= 0x01
    return bytes(data)


@pytest.mark.parametrize("name, error, field", [
    ("alg", HeaderError, "alg"),
    ("content_type", IntegrityError, "ciphertext"),
    ("job_id", IntegrityError, "ciphertext"),
    ("kid", UnknownKeyError, "kid"),
    ("nonce", (HeaderError, IntegrityError), None),
    ("wrapped_key", (HeaderError, UnwrapError), None),
])
def test_flipped_header_field_is_named(keystore: KeyStore, name: str, error: type, field: str | None) -> None:
    blob = _flip_in_field(envelope.encrypt(PLAIN, "job-1", "image/png", keystore), name)
    with pytest.raises(error) as caught:
        envelope.decrypt(blob, keystore)
    if field:
        assert caught.value.field == field
    assert str(caught.value)


def test_every_single_byte_flip_is_refused(keystore: KeyStore) -> None:
    """Flip each byte of the prefix and header, and a sample through ciphertext and tag."""
    blob = envelope.encrypt(PLAIN[:64], "job-1", "image/png", keystore)
    prefix = len(blob) - (64 + 16)
    positions = list(range(prefix)) + list(range(prefix, len(blob), 7)) + [len(blob) - 1]
    for pos in positions:
        data = bytearray(blob)
        data[pos] ^= 0x10
        with pytest.raises(OutputError):
            envelope.decrypt(bytes(data), keystore)


@pytest.mark.parametrize("where, error", [
    ("magic", FormatError), ("version", FormatError), ("length", (HeaderError, TruncatedError)),
    ("ciphertext", IntegrityError), ("tag", IntegrityError),
])
def test_flipped_structure_is_named(keystore: KeyStore, where: str, error: type) -> None:
    blob = bytearray(envelope.encrypt(PLAIN, "job-1", "image/png", keystore))
    pos = {"magic": 0, "version": 4, "length": 6, "ciphertext": len(blob) - 40, "tag": len(blob) - 3}[where]
    blob[pos] ^= 0x04
    with pytest.raises(error):
        envelope.decrypt(bytes(blob), keystore)


@pytest.mark.parametrize("cut", [0, 3, 8, 20, "header_end", "mid", "tag"])
def test_truncated_file(keystore: KeyStore, cut: object) -> None:
    blob = envelope.encrypt(PLAIN, "job-1", "image/png", keystore)
    header_end = 9 + len(split(blob)[0])
    keep = {"header_end": header_end, "mid": header_end + len(PLAIN) // 2, "tag": len(blob) - 1}.get(cut, cut)
    with pytest.raises((TruncatedError, IntegrityError)) as caught:
        envelope.decrypt(blob[:keep], keystore)
    if isinstance(cut, int) or cut == "header_end":
        assert isinstance(caught.value, TruncatedError)


def test_unknown_kid_and_hostile_kid(keystore: KeyStore, tmp_path) -> None:
    other = KeyStore.open(tmp_path / "other-keys")
    blob = envelope.encrypt(PLAIN, "job-1", "image/png", other)
    with pytest.raises(UnknownKeyError, match="not in"):
        envelope.decrypt(blob, keystore)
    header_bytes, header, rest = split(blob)
    header["kid"] = "../../etc/passwd"
    hb = json.dumps(header, sort_keys=True, separators=(",", ":")).encode()
    with pytest.raises(HeaderError) as caught:
        envelope.decrypt(b"SAIE\x01" + struct.pack(">I", len(hb)) + hb + rest, keystore)
    assert caught.value.field == "kid"


def test_non_canonical_header_refused(keystore: KeyStore) -> None:
    blob = envelope.encrypt(PLAIN, "job-1", "image/png", keystore)
    header_bytes, header, rest = split(blob)
    loose = json.dumps(header, sort_keys=True).encode()  # ", " and ": " separators
    with pytest.raises(HeaderError, match="canonical"):
        envelope.decrypt(b"SAIE\x01" + struct.pack(">I", len(loose)) + loose + rest, keystore)
    # base64 slack bits: same decoded key, different text
    text = header["wrapped_key"]
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
    alt = text[:-3] + alphabet[alphabet.index(text[-3]) ^ 1] + text[-2:]  # a slack bit
    assert alt != text and base64.b64decode(alt) == base64.b64decode(text)
    header["wrapped_key"] = alt
    hb = json.dumps(header, sort_keys=True, separators=(",", ":")).encode()
    with pytest.raises(HeaderError):
        envelope.decrypt(b"SAIE\x01" + struct.pack(">I", len(hb)) + hb + rest, keystore)


def test_duplicate_and_unknown_header_fields(keystore: KeyStore) -> None:
    blob = envelope.encrypt(PLAIN, "job-1", "image/png", keystore)
    header_bytes, header, rest = split(blob)
    for hb in (header_bytes[:-1] + b',"zzz":"1"}', header_bytes[:-1] + b',"alg":"A256GCM"}'):
        with pytest.raises(HeaderError):
            envelope.decrypt(b"SAIE\x01" + struct.pack(">I", len(hb)) + hb + rest, keystore)


def test_rewrap_changes_only_kid_and_wrapped_key(keystore: KeyStore) -> None:
    blob = envelope.encrypt(PLAIN, "job-1", "image/png", keystore)
    old_kid = keystore.current_kek_id
    keystore.rotate()
    new = envelope.rewrap(blob, keystore)
    (_, h_old, c_old), (_, h_new, c_new) = split(blob), split(new)
    assert c_new == c_old  # not re-encrypted
    assert h_new["kid"] == keystore.current_kek_id != old_kid
    assert h_new["wrapped_key"] != h_old["wrapped_key"]
    assert {k: v for k, v in h_new.items() if k not in ("kid", "wrapped_key")} == \
           {k: v for k, v in h_old.items() if k not in ("kid", "wrapped_key")}
    assert envelope.decrypt(new, keystore)[1] == PLAIN
    assert envelope.rewrap(new, keystore) == new  # idempotent


def test_text_api(keystore: KeyStore) -> None:
    blob = envelope.encrypt_text("a prompt ✓", "job-7", keystore)
    assert b"prompt" not in blob
    assert split(blob)[1]["content_type"].startswith("text/plain")
    assert envelope.decrypt_text(blob, keystore, job_id="job-7") == "a prompt ✓"
    with pytest.raises(HeaderError, match="belongs to job"):
        envelope.decrypt_text(blob, keystore, job_id="job-8")
    with pytest.raises(HeaderError):
        envelope.decrypt_text(envelope.encrypt(b"x", "job-7", "image/png", keystore), keystore)


def test_prompt_sealer_shares_a_data_key_with_fresh_nonces_and_follows_rotation(keystore: KeyStore) -> None:
    sealer = envelope.PromptSealer(keystore, cache_size=0)
    first, second = sealer.seal("first prompt", "j1"), sealer.seal("second prompt", "j2")
    (hb1, h1, _), (hb2, h2, _) = split(first), split(second)
    assert h1["wrapped_key"] == h2["wrapped_key"] and h1["nonce"] != h2["nonce"]
    for header_bytes, header in ((hb1, h1), (hb2, h2)):  # the fast header spelling is the canonical one
        assert header_bytes == json.dumps(header, sort_keys=True, separators=(",", ":")).encode()
    assert envelope.decrypt_text(first, keystore, job_id="j1") == "first prompt"
    assert sealer.open(second, "j2") == "second prompt"
    with pytest.raises(HeaderError, match="belongs to job"):
        sealer.open(first, "j2")  # a blob moved to another job's row
    keystore.rotate()
    after = split(sealer.seal("after rotation", "j3"))[1]
    assert after["kid"] == keystore.current_kek_id != h1["kid"]
    assert after["wrapped_key"] != h1["wrapped_key"]
    assert sealer.seal("", "j4") == b""
