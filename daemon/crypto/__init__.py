"""Keys and the SAIE envelope; the error classes every output-protection step raises.

Each error names *what* failed (`field`: "header", "nonce", "wrapped_key", "kid", "ciphertext",
"signature", "manifest", "passphrase", ...) and says what an operator can do about it. Messages
never contain key material, plaintext or prompt text.

Import the submodules directly (`daemon.crypto.keys`, `daemon.crypto.envelope`); this package
module stays import-light so that error classes are cheap to use anywhere.
"""

from __future__ import annotations


class OutputError(Exception):
    """Base class: an output could not be protected, verified, decrypted or inspected."""

    field: str = "output"

    def __init__(self, message: str, *, field: str | None = None, path: str | None = None) -> None:
        super().__init__(message)
        if field is not None:
            self.field = field
        self.path = path

    def to_dict(self) -> dict[str, str | None]:
        return {"error": type(self).__name__, "field": self.field, "message": str(self), "path": self.path}


# --- the encrypted file --------------------------------------------------------------------------

class FormatError(OutputError):
    """The bytes are not a SAIE file this version can read (magic, version, header shape)."""

    field = "header"


class TruncatedError(FormatError):
    """The file ends before the structure it announces (header length, tag)."""

    field = "length"


class HeaderError(FormatError):
    """The header is not canonical JSON with the fields the format requires."""


class IntegrityError(OutputError):
    """AES-GCM authentication failed: ciphertext, tag, nonce or protected header changed."""

    field = "ciphertext"


class UnwrapError(OutputError):
    """The wrapped data key does not unwrap under the named key-encryption key."""

    field = "wrapped_key"


# --- keys ----------------------------------------------------------------------------------------

class KeyStoreError(OutputError):
    """The key directory is missing, unreadable, inconsistent or too open."""

    field = "keystore"


class UnknownKeyError(KeyStoreError):
    """A file names a key id this key store does not hold."""

    field = "kid"


class WrongPassphraseError(KeyStoreError):
    """The passphrase does not open the sealed keys (or none was given for sealed keys)."""

    field = "passphrase"


class KeyPermissionError(KeyStoreError):
    """A key file or directory is readable by other users."""

    field = "mode"


# --- manifests -----------------------------------------------------------------------------------

class ManifestError(OutputError):
    """A manifest is missing, malformed, or does not describe the file beside it."""

    field = "manifest"


class SignatureError(ManifestError):
    """The manifest signature does not verify (or its signing key is unknown)."""

    field = "signature"


class HashMismatchError(ManifestError):
    """A file's SHA-256 or size differs from what its signed manifest says."""

    field = "hash"


class MissingOutputError(ManifestError):
    """An output file that should exist does not."""

    field = "file"


class WatermarkError(OutputError):
    """A watermark could not be applied or read (e.g. a logo file that does not load)."""

    field = "watermark"


__all__ = [
    "FormatError",
    "HashMismatchError",
    "HeaderError",
    "IntegrityError",
    "KeyPermissionError",
    "KeyStoreError",
    "ManifestError",
    "MissingOutputError",
    "OutputError",
    "SignatureError",
    "TruncatedError",
    "UnknownKeyError",
    "UnwrapError",
    "WatermarkError",
    "WrongPassphraseError",
]
