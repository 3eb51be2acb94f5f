"""The SAIE envelope (`.png.sai` files and encrypted database fields). See docs/formats.md.

    b"SAIE" | 0x01 | u32 big-endian header length | header (canonical JSON) | ciphertext ‖ 16-byte tag

Header: `alg` ("A256GCM"), `kid`, `wrapped_key` (base64, RFC 3394 wrap of the 32-byte data key under
KEK `kid`), `nonce` (base64, 12 bytes), `job_id`, `content_type`. Canonical JSON: keys sorted, no
whitespace, ASCII only, standard padded base64 — a reader refuses any other spelling, so the
header bytes are a function of the field values.

AAD (the one refinement of DESIGN.md, reason in docs/formats.md): the bytes a SAIE prefix would
have if the header held only the *protected* fields `alg`, `content_type`, `job_id`, `nonce`:

    AAD = b"SAIE" | 0x01 | u32be(len(P)) | P      P = canonical JSON of the protected fields

`kid` and `wrapped_key` are left out of the AAD (as JWE leaves its per-recipient `encrypted_key`
out) so key rotation can re-wrap the data key by rewriting only the header. They are still
integrity-protected: RFC 3394 unwrapping checks a 64-bit integrity value, and a data key other
than the one that encrypted the file fails the GCM tag.
"""

from __future__ import annotations

import base64
import json
import secrets
import struct
import threading
from collections import OrderedDict
from dataclasses import dataclass
from json.encoder import encode_basestring_ascii as _quote
from typing import TYPE_CHECKING, Any, Protocol

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.keywrap import InvalidUnwrap, aes_key_unwrap, aes_key_wrap

from daemon.crypto import FormatError, HeaderError, IntegrityError, TruncatedError, UnwrapError
from daemon.crypto.keys import KID_RE

if TYPE_CHECKING:
    from daemon.crypto.keys import KeyStore

MAGIC = b"SAIE"
VERSION = 1
ALG = "A256GCM"
PREFIX_LEN = 9  # magic, version, header length
TAG_LEN = 16
NONCE_LEN = 12
WRAPPED_LEN = 40
MAX_HEADER = 64 * 1024
FIELDS = ("alg", "content_type", "job_id", "kid", "nonce", "wrapped_key")
PROTECTED = ("alg", "content_type", "job_id", "nonce")
TEXT = "text/plain; charset=utf-8"
PNG = "image/png"


class KekSource(Protocol):
    """Where key-encryption keys come from: the box's KeyStore, or the fleet's shared prompt key
    (daemon.fleet.prompt_key), which seals prompts every box of a fleet can open."""

    @property
    def current_kek_id(self) -> str: ...

    def kek(self, kid: str) -> bytes: ...


def canonical_json(obj: dict[str, Any]) -> bytes:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode("ascii")


def _string_object(fields: dict[str, str], keys: tuple[str, ...]) -> bytes:
    """`canonical_json` of a flat object of strings whose `keys` are given in sorted order, without
    the generic encoder (this runs for every prompt sealed and every output written)."""
    return ("{" + ",".join(f'"{k}":{_quote(fields[k])}' for k in keys) + "}").encode("ascii")


def _prefixed(header: bytes) -> bytes:
    return MAGIC + bytes([VERSION]) + struct.pack(">I", len(header)) + header


def aad_for(header: dict[str, str]) -> bytes:
    """The additional authenticated data: a SAIE prefix over the protected fields only."""
    return _prefixed(_string_object(header, PROTECTED))


@dataclass(frozen=True)
class Envelope:
    """A parsed SAIE file. `ciphertext` includes the tag; nothing here is decrypted."""

    header: dict[str, str]
    header_bytes: bytes
    ciphertext: memoryview
    nonce: bytes
    wrapped_key: bytes

    @property
    def kid(self) -> str:
        return self.header["kid"]

    @property
    def job_id(self) -> str:
        return self.header["job_id"]

    @property
    def aad(self) -> bytes:
        return aad_for(self.header)

    @property
    def prefix_len(self) -> int:
        return PREFIX_LEN + len(self.header_bytes)


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _b64_field(header: dict[str, str], name: str, length: int) -> bytes:
    text = header[name]
    try:
        raw = base64.b64decode(text.encode("ascii"), validate=True)
    except (ValueError, UnicodeEncodeError):
        raise HeaderError(f"header field {name!r} is not base64", field=name) from None
    if len(raw) != length or _b64(raw) != text:
        raise HeaderError(f"header field {name!r} must be the canonical base64 of {length} bytes", field=name)
    return raw


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    result: dict[str, Any] = {}
    for key, value in pairs:
        if key in result:
            raise HeaderError(f"header field {key!r} appears twice", field=key)
        result[key] = value
    return result


def parse(blob: bytes | memoryview) -> Envelope:
    """Check the structure of a SAIE blob without any key; raise a FormatError subclass naming the fault."""
    view = memoryview(blob)
    if len(view) < PREFIX_LEN:
        raise TruncatedError(f"file is {len(view)} bytes, shorter than the 9-byte SAIE prefix")
    if bytes(view[:4]) != MAGIC:
        raise FormatError("not a SAIE encrypted file (the first bytes are not 'SAIE')", field="magic")
    if view[4] != VERSION:
        raise FormatError(f"SAIE version {view[4]} is not supported (this build reads version {VERSION})",
                          field="version")
    (length,) = struct.unpack(">I", view[5:9])
    if length > MAX_HEADER:
        raise HeaderError(f"header length {length} exceeds {MAX_HEADER} bytes (damaged length field?)",
                          field="header_length")
    if PREFIX_LEN + length > len(view):
        raise TruncatedError(f"file ends inside the header ({len(view)} bytes, header needs {PREFIX_LEN + length})")
    header_bytes = bytes(view[PREFIX_LEN:PREFIX_LEN + length])
    try:
        header = json.loads(header_bytes.decode("utf-8"), object_pairs_hook=_no_duplicates)
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise HeaderError("header is not valid UTF-8 JSON (damaged header bytes)") from None
    if not isinstance(header, dict):
        raise HeaderError("header is not a JSON object")
    missing = [f for f in FIELDS if f not in header]
    unknown = sorted(set(header) - set(FIELDS))
    if missing or unknown:
        name = (missing or unknown)[0]
        what = "is missing" if missing else "is not a SAIE v1 field"
        raise HeaderError(f"header field {name!r} {what}", field=name)
    for name in FIELDS:
        if not isinstance(header[name], str):
            raise HeaderError(f"header field {name!r} must be a string", field=name)
    if header["alg"] != ALG:
        raise HeaderError(f"algorithm {header['alg']!r} is not supported (expected {ALG})", field="alg")
    if not KID_RE.match(header["kid"]):
        raise HeaderError(f"key id {header['kid']!r} is not a valid key id", field="kid")
    nonce = _b64_field(header, "nonce", NONCE_LEN)
    wrapped = _b64_field(header, "wrapped_key", WRAPPED_LEN)
    if canonical_json(header) != header_bytes:
        raise HeaderError("header bytes are not in canonical form (modified after writing?)")
    ciphertext = view[PREFIX_LEN + length:]
    if len(ciphertext) < TAG_LEN:
        raise TruncatedError(f"file ends {TAG_LEN - len(ciphertext)} bytes short of the authentication tag",
                             field="tag")
    return Envelope(header, header_bytes, ciphertext, nonce, wrapped)


def _build(header: dict[str, str], ciphertext: bytes | memoryview) -> bytes:
    return b"".join((_prefixed(_string_object(header, FIELDS)), ciphertext))


def _seal(plaintext: bytes, job_id: str, content_type: str, kid: str, aead: AESGCM, wrapped_b64: str) -> bytes:
    nonce = secrets.token_bytes(NONCE_LEN)
    header = {"alg": ALG, "content_type": content_type, "job_id": job_id, "kid": kid,
              "nonce": _b64(nonce), "wrapped_key": wrapped_b64}
    return _build(header, aead.encrypt(nonce, plaintext, aad_for(header)))


def encrypt(plaintext: bytes, job_id: str, content_type: str, keystore: KekSource) -> bytes:
    """Encrypt under a fresh data key and nonce, the data key wrapped with the current KEK."""
    kid = keystore.current_kek_id
    data_key = AESGCM.generate_key(bit_length=256)
    return _seal(plaintext, job_id, content_type, kid, AESGCM(data_key),
                 _b64(aes_key_wrap(keystore.kek(kid), data_key)))


def _data_key(env: Envelope, keystore: KekSource) -> bytes:
    kek = keystore.kek(env.kid)  # UnknownKeyError names the kid
    try:
        return aes_key_unwrap(kek, env.wrapped_key)
    except InvalidUnwrap:
        raise UnwrapError(f"the wrapped data key does not unwrap under key-encryption key {env.kid!r} "
                          f"(wrapped_key or kid was modified)") from None


def decrypt(blob: bytes | memoryview, keystore: KekSource) -> tuple[dict[str, str], bytes]:
    """(header, plaintext); raises an OutputError subclass naming what failed. Nothing is returned
    unless the GCM tag verified."""
    env = parse(blob)
    data_key = _data_key(env, keystore)
    try:
        plaintext = AESGCM(data_key).decrypt(env.nonce, bytes(env.ciphertext), env.aad)
    except InvalidTag:
        raise IntegrityError("authentication failed: the ciphertext, tag, nonce or a protected header field "
                             "was modified, or the file was truncated") from None
    return dict(env.header), plaintext


def rewrap(blob: bytes | memoryview, keystore: KeyStore, kid: str | None = None) -> bytes:
    """Re-wrap the data key under KEK `kid` (default: current). The ciphertext and the AAD are
    unchanged; only `kid` and `wrapped_key` in the header differ. A blob already under `kid` is
    returned as is."""
    env = parse(blob)
    target = kid or keystore.current_kek_id
    if env.kid == target:
        return bytes(blob)
    data_key = _data_key(env, keystore)
    header = dict(env.header, kid=target, wrapped_key=_b64(aes_key_wrap(keystore.kek(target), data_key)))
    assert aad_for(header) == env.aad
    return _build(header, env.ciphertext)


def encrypt_text(text: str, job_id: str, keystore: KekSource) -> bytes:
    """A prompt (or any text) for the database, as a SAIE blob with content_type text/plain."""
    return encrypt(text.encode("utf-8"), job_id, TEXT, keystore)


def decrypt_text(blob: bytes, keystore: KekSource, job_id: str | None = None) -> str:
    """The text back; with `job_id`, also refuse a blob that belongs to another job (swapped rows)."""
    header, plaintext = decrypt(blob, keystore)
    if header["content_type"] != TEXT:
        raise HeaderError(f"content type {header['content_type']!r} is not text", field="content_type")
    if job_id is not None and header["job_id"] != job_id:
        raise HeaderError(f"encrypted text belongs to job {header['job_id']!r}, not {job_id!r}", field="job_id")
    return plaintext.decode("utf-8")


def reseal_text(blob: bytes, job_id: str, keystore: KeyStore) -> bytes | None:
    """A database text blob brought under the current KEK, or None when it already is.

    A blob without the SAIE magic is plaintext from a build that stored prompts unencrypted: it is
    encrypted now. A SAIE blob under an older KEK is re-wrapped (ciphertext unchanged).
    """
    data = bytes(blob)
    if not data:
        return None  # an empty text is stored empty (see PromptSealer.seal)
    if data[:4] != MAGIC:
        return encrypt_text(data.decode("utf-8"), job_id, keystore)
    new = rewrap(data, keystore)
    return None if new == data else new


PROMPT_KEY_USES = 1 << 20
"""Prompts sealed under one data key. Random 96-bit GCM nonces stay far inside NIST SP 800-38D's
2**32 invocations per key."""


class PromptSealer:
    """The job store's TextSealer: prompts are SAIE blobs (text/plain) bound to their job id.

    Opening a blob costs tens of microseconds (header checks, unwrap, GCM), and `job.list` reads
    up to thousands of rows on the event loop, so recently opened blobs are remembered (LRU, keyed
    by the exact blob and job id: a changed or re-wrapped blob is opened afresh). The plaintext
    stays in this process's memory only, where the queue holds live jobs' prompts anyway.
    """

    def __init__(self, keystore: KekSource, cache_size: int = 4096) -> None:
        self.keystore = keystore
        self._cache: OrderedDict[tuple[str, bytes], str] = OrderedDict()
        self._cache_size = cache_size
        self._lock = threading.Lock()
        self._data_key: tuple[str, AESGCM, str] | None = None
        self._data_key_uses = 0

    def seal(self, text: str, job_id: str) -> bytes:
        if not text:
            return b""  # nothing to hide (most jobs have no negative prompt); saves an envelope per submit
        kid, aead, wrapped = self._current_data_key()
        blob = _seal(text.encode("utf-8"), job_id, TEXT, kid, aead, wrapped)
        self._remember((job_id, blob), text)
        return blob

    def _current_data_key(self) -> tuple[str, AESGCM, str]:
        """The data key prompts are sealed under: one per PROMPT_KEY_USES prompts and per KEK.

        Each prompt still gets its own random nonce and the envelope is the same SAIE blob, with
        the (shared) data key wrapped in its header, so readers, rotation and re-wrapping see no
        difference; sharing the key only saves a key generation and a key wrap per submit.
        """
        kid = self.keystore.current_kek_id
        with self._lock:
            if self._data_key is None or self._data_key[0] != kid or self._data_key_uses >= PROMPT_KEY_USES:
                data_key = AESGCM.generate_key(bit_length=256)
                self._data_key = (kid, AESGCM(data_key), _b64(aes_key_wrap(self.keystore.kek(kid), data_key)))
                self._data_key_uses = 0
            self._data_key_uses += 1
            return self._data_key

    def open(self, blob: bytes, job_id: str) -> str:
        if not blob:
            return ""
        key = (job_id, bytes(blob))
        with self._lock:
            text = self._cache.get(key)
            if text is not None:
                self._cache.move_to_end(key)
                return text
        text = decrypt_text(key[1], self.keystore, job_id)
        self._remember(key, text)
        return text

    def _remember(self, key: tuple[str, bytes], text: str) -> None:
        if self._cache_size <= 0:
            return
        with self._lock:
            self._cache[key] = text
            self._cache.move_to_end(key)
            while len(self._cache) > self._cache_size:
                self._cache.popitem(last=False)
