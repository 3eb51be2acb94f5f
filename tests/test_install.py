"""The environment the suite runs in is the one the lock file pins: nothing resolved on the side."""

from __future__ import annotations

from importlib import metadata
from pathlib import Path

import pytest
from packaging.version import Version

from daemon.lockfile import CHECKOUT as ROOT
from daemon.lockfile import installed_lock_name, pins


def installed_lock() -> Path:
    """The lock `make` chose: the CPU build of torch comes from requirements.lock, the CUDA build from the other."""
    return ROOT / installed_lock_name()


def test_every_locked_package_is_installed_at_its_pinned_version() -> None:
    lock = installed_lock()
    if "latest" in str(metadata.distribution("secure-ai-studio").locate_file("")):
        pytest.skip("make test-latest installs the newest releases on purpose")
    wrong = {}
    for name, version in pins(lock).items():
        try:
            have = metadata.version(name)
        except metadata.PackageNotFoundError:
            have = "missing"
        if have != version:
            wrong[name] = f"{have} (lock: {version})"
    assert not wrong, f"installed packages differ from {lock.name}: {wrong}; run `make setup`"


def test_both_locks_hold_the_same_tested_releases() -> None:
    """The CPU and the CUDA lock differ only in torch's build and the CUDA runtime packages."""
    cpu, cuda = pins(ROOT / "requirements.lock"), pins(ROOT / "requirements-cuda.lock")
    assert Version(cpu["torch"]).public == Version(cuda["torch"]).public == "2.13.0"
    cuda_only = {name for name in cuda.keys() - cpu.keys()
                 if not (name.startswith("nvidia-") or name in {"triton", "cuda-bindings", "cuda-pathfinder", "cuda-toolkit"})}
    assert not cuda_only, f"packages only in the CUDA lock: {sorted(cuda_only)}"
    differing = {name for name in cpu.keys() & cuda.keys() if name != "torch" and cpu[name] != cuda[name]}
    assert not differing, f"the two locks pin different versions of {sorted(differing)}: run `make lock`"
