"""Built-in tiny models of every family, built once per session in a child process."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.models.worker_helpers import build_in_subprocess


@pytest.fixture(scope="session")
def models_state(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A worker state dir shared by the session: built-ins land in its models/ once."""
    return tmp_path_factory.mktemp("models-state")


@pytest.fixture(scope="session")
def built(models_state: Path) -> dict[str, Path]:
    names = ("tiny", "tiny-sdxl", "tiny-sd3", "tiny-flux", "tiny-pixart")
    return {name: build_in_subprocess(name, models_state / "models" / name) for name in names}
