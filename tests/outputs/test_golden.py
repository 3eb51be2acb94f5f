"""Visual regression: the watermark path on fixed synthetic images against stored golden PNGs.

Goldens (tests/outputs/golden/*.png) are the marked images for fixed seeds and job ids. Compared
with scikit-image within these tolerances (OpenCV's anti-aliasing and rounding may move a few
pixels by a level or two between builds; a changed layout, colour or strength moves far more):

    SSIM (channel-wise, data_range 255)  >= 0.98
    MSE                                  <= 4.0   (mean squared error, 0..255 levels)

The invisible fingerprint is also checked exactly on the golden itself. Regenerate with
`SAI_UPDATE_GOLDEN=1 pytest tests/outputs/test_golden.py` after an intended change, and
look at the images before committing them.

The goldens depend on the OpenCV release that drew them (`golden/OPENCV_VERSION`): OpenCV 5.1
changed the text metrics, so the lock holds 5.0. Under another release (`make test-latest`) a
failure names both versions, so drift reads as drift and not as a broken mark.
"""

from __future__ import annotations

import os
from pathlib import Path

import cv2
import numpy as np
import pytest
from skimage.metrics import mean_squared_error, structural_similarity

from daemon.outputs import watermark
from daemon.outputs.pipeline import OutputSettings, mark_image
from daemon.outputs.png import read_png
from tests.outputs.out_helpers import FIXED_TIME, make_info

GOLDEN = Path(__file__).parent / "golden"
DRAWN_WITH = GOLDEN / "OPENCV_VERSION"
SSIM_MIN = 0.98
MSE_MAX = 4.0

CASES = {
    "blobs-text": ("blobs", 11, OutputSettings.defaults(), "j-golden-1"),
    "gradient-tiled": ("gradient", 12, OutputSettings.defaults(visible_kind="tiled", angle=30.0, opacity=0.35), "j-golden-2"),
    "dark-top-left": ("flat-dark", 13, OutputSettings.defaults(position="top-left", scale=0.06, angle=-10.0), "j-golden-3"),
    "light-center": ("flat-light", 14, OutputSettings.defaults(position="center", scale=0.05, opacity=0.8), "j-golden-4"),
}


def clean(kind: str, seed: int, size: int = 256) -> np.ndarray:
    """Noise-free variants of the synthetic images, so the golden files stay small (2-40 KB)."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:size, 0:size] / size
    if kind == "blobs":
        img = cv2.resize(rng.normal(128, 45, (6, 6, 3)), (size, size), interpolation=cv2.INTER_CUBIC)
    elif kind == "gradient":
        img = np.stack([255 * x, 255 * y, 160 * (1 - x) * y + rng.uniform(20, 60)], axis=-1)
    else:
        img = np.full((size, size, 3), {"flat-light": 235.0, "flat-dark": 20.0}[kind])
    return np.clip(np.rint(img), 0, 255).astype(np.uint8)


def render(case: str) -> np.ndarray:
    kind, seed, settings, job = CASES[case]
    image, _, invisible = mark_image(clean(kind, seed), make_info(job), settings, FIXED_TIME)
    assert invisible
    return image


@pytest.mark.parametrize("case", sorted(CASES))
def test_golden(case: str) -> None:
    path = GOLDEN / f"{case}.png"
    current = render(case)
    if os.environ.get("SAI_UPDATE_GOLDEN") == "1":
        GOLDEN.mkdir(exist_ok=True)
        ok, data = cv2.imencode(".png", cv2.cvtColor(current, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_PNG_COMPRESSION, 9])
        path.write_bytes(data.tobytes())
        DRAWN_WITH.write_text(cv2.__version__ + "\n")
    golden, _ = read_png(path.read_bytes())
    assert golden.shape == current.shape
    ssim = structural_similarity(golden, current, channel_axis=2, data_range=255)
    mse = mean_squared_error(golden, current)
    drawn_with = DRAWN_WITH.read_text().strip()
    drift = "" if drawn_with == cv2.__version__ else (
        f"; goldens drawn with OpenCV {drawn_with}, this run has {cv2.__version__}: "
        "if the lock moved on purpose, look at the new images and regenerate (SAI_UPDATE_GOLDEN=1)")
    assert ssim >= SSIM_MIN and mse <= MSE_MAX, \
        f"{case}: SSIM {ssim:.4f} (min {SSIM_MIN}), MSE {mse:.3f} (max {MSE_MAX}){drift}"
    job = CASES[case][3]
    assert watermark.read_invisible(golden).matches(job)


def test_marks_change_the_image_measurably() -> None:
    """The tolerance is meaningful: an unmarked image falls outside it."""
    kind, seed, _, _ = CASES["light-center"]
    golden, _ = read_png((GOLDEN / "light-center.png").read_bytes())
    plain = clean(kind, seed)
    ssim = structural_similarity(golden, plain, channel_axis=2, data_range=255)
    assert ssim < SSIM_MIN or mean_squared_error(golden, plain) > MSE_MAX
