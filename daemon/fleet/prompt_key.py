"""The fleet's prompt key: one 32-byte key every box of a fleet holds, so any box can run any job.

A box's own keys never leave it, so prompts sealed under them could only be run where they were
submitted. Prompts of fleet jobs are instead SAIE blobs (daemon.crypto.envelope, AES-256-GCM, the
job id bound in the AAD) whose data keys are wrapped under this shared key: the database (its
backups, its replicas, its operator) holds only ciphertext, and a box without the key cannot read
or forge a prompt. The operator makes the file once (`sai fleet key generate FILE`) and copies it
to each box out of band, like a TLS key; the daemon refuses a file that others could read.
"""

from __future__ import annotations

import hashlib
import os
import secrets
import stat
from pathlib import Path

from daemon.crypto import UnknownKeyError
from daemon.fleet.errors import FleetError

KEY_BYTES = 32


class PromptKeyError(FleetError):
    """The prompt key file is missing, unsafe or not a key; the message says which and what to do."""


class FleetPromptKey:
    """A KekSource (daemon.crypto.envelope) of exactly one key-encryption key: the fleet's."""

    def __init__(self, key: bytes) -> None:
        if len(key) != KEY_BYTES:
            raise PromptKeyError(f"a fleet prompt key is {KEY_BYTES} bytes, not {len(key)}")
        self._key = key
        self._kid = "fleet-" + hashlib.sha256(b"sai fleet prompt key\0" + key).hexdigest()[:16]

    @property
    def current_kek_id(self) -> str:
        """Names the key (a digest, not the key): blobs say which fleet key sealed them."""
        return self._kid

    def kek(self, kid: str) -> bytes:
        if kid != self._kid:
            raise UnknownKeyError(f"this prompt was sealed under fleet prompt key {kid!r}, but this box holds "
                                  f"{self._kid!r}: every box of a fleet needs the same [fleet] prompt_key_file")
        return self._key

    def __repr__(self) -> str:  # never the key itself, in a log or a traceback
        return f"FleetPromptKey({self._kid})"


def generate(path: Path) -> str:
    """Write a new random key to `path` (created, never overwritten; mode 0600); returns its id."""
    key = secrets.token_bytes(KEY_BYTES)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        raise PromptKeyError(f"{path} exists; a fleet's prompt key is made once and copied to every box "
                             "(remove the file first if you really mean to replace it)") from None
    with os.fdopen(fd, "wb") as out:
        out.write(key)
        out.flush()
        os.fsync(out.fileno())
    return FleetPromptKey(key).current_kek_id


def load(path: str | Path) -> FleetPromptKey:
    """The key in `path`: refused unless it is a regular file of 32 bytes, mode 0600 (or 0400) and
    owned by this process's user."""
    where = Path(path)
    if not str(path):
        raise PromptKeyError("[fleet] prompt_key_file is not set: a fleet member needs the fleet's prompt key "
                             "(make it once with `sai fleet key generate FILE`, copy it to every box)")
    try:
        fd = os.open(where, os.O_RDONLY | os.O_NOFOLLOW)
    except FileNotFoundError:
        raise PromptKeyError(f"[fleet] prompt_key_file {where} does not exist (make it once with "
                             "`sai fleet key generate FILE` and copy it to every box)") from None
    except OSError as exc:
        raise PromptKeyError(f"[fleet] prompt_key_file {where} cannot be read: {exc.strerror or exc}") from None
    with os.fdopen(fd, "rb") as src:
        info = os.fstat(src.fileno())
        if not stat.S_ISREG(info.st_mode):
            raise PromptKeyError(f"[fleet] prompt_key_file {where} is not a regular file")
        if info.st_uid != os.geteuid():
            raise PromptKeyError(f"[fleet] prompt_key_file {where} is owned by uid {info.st_uid}, not by the "
                                 f"daemon's user (uid {os.geteuid()}): chown it")
        if stat.S_IMODE(info.st_mode) & 0o077:
            raise PromptKeyError(f"[fleet] prompt_key_file {where} has mode {stat.S_IMODE(info.st_mode):04o}; "
                                 "others may not read the fleet's prompt key: chmod 600 it")
        key = src.read(KEY_BYTES + 1)
    if len(key) != KEY_BYTES:
        raise PromptKeyError(f"[fleet] prompt_key_file {where} holds {len(key)} bytes, not a {KEY_BYTES}-byte "
                             "key (make one with `sai fleet key generate FILE`)")
    return FleetPromptKey(key)
