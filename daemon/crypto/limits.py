"""Bounds on the key store's scrypt cost, import-light (the config checks them at load).

Below 2^15 (32 MiB, about 0.1 s) a copy of keys.json is cheap to guess the passphrase from;
above 2^22 (4 GiB) the daemon would not start on most machines.
"""

from __future__ import annotations

from typing import Any

MIN_LOG2_N = 15
MAX_LOG2_N = 22


def check_scrypt_log2_n(value: Any) -> str | None:
    """Why `value` is not an acceptable `keys.scrypt_log2_n`, or None."""
    if isinstance(value, bool) or not isinstance(value, int) or not MIN_LOG2_N <= value <= MAX_LOG2_N:
        return (f"must be an integer from {MIN_LOG2_N} (2^{MIN_LOG2_N}: 32 MiB, about 0.1 s per start) to "
                f"{MAX_LOG2_N} (4 GiB); lower makes a copy of keys.json cheap to guess the passphrase from")
    return None
