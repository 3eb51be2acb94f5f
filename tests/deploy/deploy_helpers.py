"""Shared by the deployment tests: the checkout's root, a subprocess runner, an Ed25519 key pair."""

from __future__ import annotations

import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def run(argv: list[str], **kwargs: object) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, capture_output=True, text=True, timeout=900, **kwargs)  # type: ignore[call-overload]


def make_key(path: Path) -> Path:
    """An Ed25519 private key at `path` (PEM) and its public key beside it; returns the public key."""
    run(["openssl", "genpkey", "-algorithm", "ed25519", "-out", str(path)], check=True)
    pub = path.with_suffix(".pub.pem")
    run(["openssl", "pkey", "-in", str(path), "-pubout", "-out", str(pub)], check=True)
    return pub
