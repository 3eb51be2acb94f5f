"""Built-in tiny models of every family, built once per session in a child process."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.models.worker_helpers import OfflineWorker, build_in_subprocess


@pytest.fixture(scope="session")
def models_state(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A worker state dir shared by the session: built-ins land in its models/ once."""
    return tmp_path_factory.mktemp("models-state")


@pytest.fixture(scope="session")
def built(models_state: Path) -> dict[str, Path]:
    names = ("tiny", "tiny-sdxl", "tiny-sd3", "tiny-flux", "tiny-pixart")
    return {name: build_in_subprocess(name, models_state / "models" / name) for name in names}


@pytest.fixture
def worker(models_state: Path, built: dict[str, Path]) -> Iterator[OfflineWorker]:
    """The real worker under `unshare -n`, ready with the default tiny model."""
    started = OfflineWorker({"model": "tiny", "state_dir": str(models_state)})
    started.until("ready")
    yield started
    started.close()
