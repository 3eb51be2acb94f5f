"""The lock files that pin every installed package: which one applies and what it pins.

`requirements.lock` holds the CPU build of torch (`torch==2.13.0+cpu`), `requirements-cuda.lock` the
CUDA build; both are for CPython 3.11 on Linux x86_64 (`make lock`). A checkout keeps them at the
repository root; an installed bundle has PREFIX/.venv and the lock it installed from at
PREFIX/requirements.lock (install.sh copies it there).
"""

from __future__ import annotations

import re
import sys
from importlib import metadata
from pathlib import Path

from packaging.utils import canonicalize_name
from packaging.version import Version

PIN = re.compile(r"^([A-Za-z0-9_.-]+)==(\S+)", re.MULTILINE)
CPU_LOCK = "requirements.lock"
CUDA_LOCK = "requirements-cuda.lock"
PYTHON = (3, 11)
"""The Python the locks were made for (`make lock --python-version 3.11`)."""
CHECKOUT = Path(__file__).resolve().parents[1]


def pins(lock: Path) -> dict[str, str]:
    """{canonical name: exact version} of every `name==version` line in `lock`."""
    return {canonicalize_name(name): version for name, version in PIN.findall(lock.read_text())}


def lock_name(torch_version: str) -> str:
    """The lock a torch build came from: local version `cpu` is the CPU lock, anything else the CUDA one."""
    return CPU_LOCK if Version(torch_version).local == "cpu" else CUDA_LOCK


def installed_lock_name() -> str:
    """The lock of the torch build installed in this environment (read from its metadata, not imported)."""
    return lock_name(metadata.version("torch"))


def lock_candidates() -> list[Path]:
    """Where this environment's lock is: the one an installed bundle copied beside its venv (whichever
    build it holds), else the checkout's lock for the installed torch build."""
    prefix = Path(sys.prefix).resolve().parent
    bundle = [prefix / CPU_LOCK] if prefix != CHECKOUT else []
    try:
        return [*bundle, CHECKOUT / installed_lock_name()]
    except metadata.PackageNotFoundError:  # no torch: its build cannot choose, both locks pin it
        return [*bundle, CHECKOUT / CPU_LOCK]


def unlocked(lock: Path) -> list[str]:
    """Installed distributions that `lock` does not pin (left by an older lock): `make setup` removes
    them before installing, so a venv holds exactly the lock (and two OpenCV builds never meet)."""
    locked = pins(lock).keys() | {canonicalize_name("secure-ai-studio")}
    names = {canonicalize_name(dist.metadata["Name"]) for dist in metadata.distributions()}
    return sorted(names - locked)


if __name__ == "__main__":
    if sys.argv[1:2] != ["--unlocked"] or len(sys.argv) != 3:
        sys.exit("usage: python -m daemon.lockfile --unlocked LOCK")
    print("\n".join(unlocked(Path(sys.argv[2]))))
