"""The key store's passphrase, from the safest place that has one:

1. `$CREDENTIALS_DIRECTORY/sai-passphrase`: a systemd credential (`LoadCredential=` or
   `LoadCredentialEncrypted=` in the unit), readable by the service alone, never in an environment;
2. the file `$SAI_PASSPHRASE_FILE` names: owned by the daemon's user (or root), mode 0600 or 0400;
3. `$SAI_PASSPHRASE`, still honoured: taken out of `os.environ` when the daemon starts, so no child
   inherits it. `/proc/<pid>/environ` keeps showing the environment a process started with, so the
   value stays readable there by root (and, were the daemon dumpable, by its own user): prefer 1 or 2;
4. a prompt, when the daemon runs on a terminal.

A trailing newline in a file is not part of the passphrase.
"""

from __future__ import annotations

import getpass
import os
import stat
import sys
from collections.abc import MutableMapping
from dataclasses import dataclass, field
from pathlib import Path

from daemon.crypto import WrongPassphraseError
from daemon.crypto.keys import PASSPHRASE_ENV, KeyStore

CREDENTIAL = "sai-passphrase"
FILE_ENV = "SAI_PASSPHRASE_FILE"


def read_secret_file(path: Path, strict: bool = True) -> str:
    """The passphrase in `path`, never read through a symlink; `strict`: only from a file of ours
    (or root's) that nobody else can read."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError as exc:
        raise WrongPassphraseError(f"cannot read the passphrase file {path}: {exc.strerror}", path=str(path)) from None
    with os.fdopen(fd, "rb") as handle:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise WrongPassphraseError(f"passphrase file {path} is not a regular file", path=str(path))
        if strict and (st.st_uid not in (0, os.geteuid()) or st.st_mode & 0o077):
            raise WrongPassphraseError(
                f"passphrase file {path} (owner uid {st.st_uid}, mode {st.st_mode & 0o777:03o}) could be read or "
                f"changed by other users; run: chown {os.geteuid()} {path} && chmod 600 {path}", path=str(path))
        text = handle.read().decode("utf-8")
    text = text[:-1] if text.endswith("\n") else text
    text = text[:-1] if text.endswith("\r") else text
    if not text:
        raise WrongPassphraseError(f"passphrase file {path} is empty", path=str(path))
    return text


@dataclass(frozen=True)
class PassphraseSources:
    """Where this daemon may find its passphrase; `take` once at start-up."""

    from_environment: str | None = field(default=None, repr=False)
    credentials_dir: str | None = None
    file: str | None = None

    @classmethod
    def take(cls, environ: MutableMapping[str, str]) -> PassphraseSources:
        """Note the sources in `environ`, and remove $SAI_PASSPHRASE from it."""
        return cls(environ.pop(PASSPHRASE_ENV, None) or None, environ.get("CREDENTIALS_DIRECTORY") or None,
                   environ.get(FILE_ENV) or None)

    def resolve(self, keys_dir: Path, seal_new: bool = False, interactive: bool | None = None) -> str | None:
        """The passphrase to open (or create) the store in `keys_dir`; None when it is (or will be
        created) unsealed. WrongPassphraseError when one is needed and none can be had."""
        sealed = KeyStore.is_sealed(keys_dir)
        if not (sealed or (sealed is None and seal_new)):
            return None
        credential = Path(self.credentials_dir, CREDENTIAL) if self.credentials_dir else None
        if credential is not None and credential.exists():
            return read_secret_file(credential, strict=False)  # systemd's, in the unit's private directory
        if self.file:
            return read_secret_file(Path(self.file))
        if self.from_environment:
            return self.from_environment
        if interactive is None:
            interactive = sys.stdin.isatty()
        if not interactive:
            raise WrongPassphraseError(
                f"the keys in {keys_dir} are sealed and no passphrase is available: give it as the systemd "
                f"credential {CREDENTIAL} (LoadCredential=), in a 0600 file named by {FILE_ENV}, in "
                f"{PASSPHRASE_ENV}, or start the daemon from a terminal")
        first = getpass.getpass("Key passphrase: ")
        if sealed is None and getpass.getpass("Repeat passphrase: ") != first:
            raise WrongPassphraseError("the two passphrases differ; nothing was created")
        return first
