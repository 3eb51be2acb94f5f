"""Shared helpers and fixtures for tests/outputs: deterministic synthetic images, OutputInfo records,
key stores. A uniquely named module instead of a conftest.py, because other test directories
import their `conftest` by name and a second conftest module would shadow theirs. Test modules
import the fixtures they use from here."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

import cv2
import numpy as np
import pytest

from daemon.crypto.keys import KeyStore
from daemon.outputs.pipeline import OutputInfo, OutputSettings

FIXED_TIME = datetime(2026, 11, 26, 12, 0, 0, tzinfo=UTC)


def synthetic(kind: str, seed: int, size: int = 256) -> np.ndarray:
    """Deterministic RGB test images: 'smooth' (blobs, like a photo), 'gradient', 'noise', 'flat-light',
    'flat-dark'. Only numpy and OpenCV arithmetic, so identical on every machine."""
    rng = np.random.default_rng(seed)
    if kind == "smooth":
        coarse = rng.normal(128, 50, (size // 16, size // 16, 3))
        img = cv2.resize(coarse, (size, size), interpolation=cv2.INTER_CUBIC) + rng.normal(0, 4, (size, size, 3))
    elif kind == "gradient":
        y, x = np.mgrid[0:size, 0:size] / size
        phase = rng.uniform(0, 1, 3)
        img = np.stack([255 * ((x + phase[0]) % 1), 255 * ((y + phase[1]) % 1),
                        200 * (1 - x) * y + 40 * phase[2]], axis=-1) + rng.normal(0, 3, (size, size, 3))
    elif kind == "noise":
        return rng.integers(0, 256, (size, size, 3), dtype=np.uint8)
    elif kind == "flat-light":
        img = np.full((size, size, 3), 235.0) + rng.normal(0, 2, (size, size, 3))
    elif kind == "flat-dark":
        img = np.full((size, size, 3), 20.0) + rng.normal(0, 2, (size, size, 3))
    else:
        raise ValueError(kind)
    return np.clip(np.rint(img), 0, 255).astype(np.uint8)


def make_info(job_id: str = "j20261126-0001", index: int = 0, **extra: object) -> OutputInfo:
    fields: dict = dict(job_id=job_id, index=index, user="alice",
                        params={"width": 256, "height": 256, "steps": 20, "guidance": 7.5},
                        prompt="a lighthouse at dusk, ünïcödé ✓", negative_prompt="blurry", seed=1234,
                        model_id="tiny", weights_sha256="ab" * 32, created=FIXED_TIME)
    fields.update(extra)
    return OutputInfo(**fields)


@pytest.fixture
def image() -> Callable[..., np.ndarray]:
    return synthetic


@pytest.fixture
def keys_dir(tmp_path: Path) -> Path:
    return tmp_path / "state" / "keys"


@pytest.fixture
def keystore(keys_dir: Path) -> KeyStore:
    return KeyStore.open(keys_dir)


@pytest.fixture
def out_dir(tmp_path: Path) -> Path:
    path = tmp_path / "state" / "outputs"
    path.mkdir(parents=True)
    return path


@pytest.fixture
def settings() -> OutputSettings:
    return OutputSettings.defaults()


@pytest.fixture
def info() -> Callable[..., OutputInfo]:
    return make_info
