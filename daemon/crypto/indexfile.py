"""The JSON index files of the key directory (`keys.json`, `c2pa.json`), read one way."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from daemon.crypto import KeyStoreError
from daemon.safefiles import read_nofollow


def read_index(path: Path, fmt: str, what: str) -> dict[str, Any]:
    """The index at `path` (never through a symlink), which must be a JSON object of format `fmt`;
    a KeyStoreError naming the file and `what` it should have been otherwise."""
    try:
        index = json.loads(read_nofollow(path))
    except (OSError, ValueError) as exc:
        raise KeyStoreError(f"cannot read {path}: {exc}", path=str(path)) from None
    if not isinstance(index, dict) or index.get("format") != fmt:
        raise KeyStoreError(f"{path} is not a {fmt} {what}", path=str(path))
    return index
