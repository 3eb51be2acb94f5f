"""Watermarks: fingerprint, invisible mark round trip and detection rate, visible mark placement,
legibility on light and dark images, detection by re-rendering."""

from __future__ import annotations

import hashlib
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

from daemon.outputs import watermark as wm
from daemon.outputs.png import encode_png, read_png
from daemon.outputs.visible import ANCHORS, PRESENT_THRESHOLD, MarkSpec, apply_visible, mark_score, overlay
from tests.outputs.out_helpers import image  # noqa: F401  (pytest fixtures)


def test_fingerprint() -> None:
    fp = wm.fingerprint("job-1")
    assert len(fp) * 8 == wm.FINGERPRINT_BITS >= 32
    assert fp == wm.fingerprint("job-1") != wm.fingerprint("job-2")
    assert fp == hashlib.sha256(b"sai-fingerprint-v1\x00job-1").digest()[:8]
    assert fp.hex() == "7c8592a0dd2101b4"  # format pin


def test_loading_the_mark_does_not_import_torch() -> None:
    import subprocess

    code = "import sys; from daemon.outputs import watermark as w; w._library(); print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         cwd=Path(__file__).resolve().parents[2])
    assert out.stdout.strip() == "False", out.stderr


@pytest.mark.parametrize("kind", ["smooth", "gradient", "noise", "flat-light", "flat-dark"])
def test_invisible_round_trip_through_png_is_exact(image, kind: str) -> None:
    rgb = image(kind, 3)
    marked = wm.embed_invisible(rgb, wm.fingerprint("job-x"))
    back, _ = read_png(encode_png(marked))
    reading = wm.read_invisible(back)
    assert reading.accuracy("job-x") == 1.0 and reading.matches("job-x") and reading.present
    assert not reading.matches("job-y")
    assert cv2.PSNR(marked, rgb) > 35  # invisible: well above visible-artefact levels


def test_detection_rate_over_many_job_ids(image) -> None:
    jobs = [f"j{n:04d}-{n * 7919 % 10007}" for n in range(24)]
    hits = 0
    false_matches = 0
    for n, job in enumerate(jobs):
        rgb = image(("smooth", "gradient", "noise")[n % 3], 100 + n)
        reading = wm.read_invisible(read_png(encode_png(wm.embed_invisible(rgb, wm.fingerprint(job))))[0])
        hits += reading.matches(job)
        false_matches += sum(reading.matches(other) for other in jobs if other != job)
    assert hits == len(jobs)  # detection rate 100% after a lossless round trip
    assert false_matches == 0


def test_unmarked_images_are_not_detected(image) -> None:
    for n, kind in enumerate(["smooth", "gradient", "noise", "flat-light"]):
        reading = wm.read_invisible(image(kind, 200 + n))
        assert not reading.present, (kind, reading.confidence)
        assert not reading.matches("job-x")


def test_the_blocks_get_the_librarys_own_rule_bit_for_bit() -> None:
    """`_embed_blocks` is `EmbedMaxDct.encode_frame` applied to all blocks at once: the same
    coefficients, to the last bit, on bands of any size (partial blocks at the edges untouched),
    rounded ones included (ties between coefficients)."""
    library = wm._library()
    rng = np.random.default_rng(7)
    for trial in range(60):
        rows, cols = (int(n) for n in rng.integers(8, 160, 2))
        band = rng.normal(0, 40 + trial, (rows, cols))
        if trial % 3 == 0:
            band = np.rint(band / 8) * 8
        fp = wm.fingerprint(f"job-{trial}")
        bits = [int(b) for b in np.unpackbits(np.frombuffer(fp, np.uint8))]
        theirs, ours = band.copy(), band.copy()
        library.EmbedMaxDct(bits, wmLen=64, scales=[0, 36, 36], block=4).encode_frame(theirs, 36)
        r, c = rows // 4, cols // 4
        wm._embed_blocks(ours, np.array(bits, dtype=bool)[np.arange(r * c) % 64].reshape(r, c), 36)
        assert np.array_equal(theirs, ours), (trial, rows, cols)


def test_stock_library_decoder_reads_our_mark(image) -> None:
    """Compatibility with invisible-watermark's own decoder (this import pulls in torch: ~3 s)."""
    from imwatermark import WatermarkDecoder

    rgb = wm.embed_invisible(image("smooth", 5), wm.fingerprint("job-lib"))
    bits = WatermarkDecoder("bits", 64).decode(cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR), "dwtDct")
    assert np.packbits(np.array(bits, dtype=bool)).tobytes() == wm.fingerprint("job-lib")


def test_too_small_for_the_invisible_mark(image) -> None:
    small = image("smooth", 1, 128)
    assert not wm.can_carry(small.shape)
    with pytest.raises(ValueError, match="too small"):
        wm.embed_invisible(small, wm.fingerprint("j"))
    assert wm.watermark_report(small)["present"] is False


def _bbox(before: np.ndarray, after: np.ndarray) -> tuple[int, int, int, int]:
    ys, xs = np.nonzero(np.any(before != after, axis=-1))
    return ys.min(), xs.min(), ys.max(), xs.max()


@pytest.mark.parametrize("anchor", ANCHORS)
def test_nine_anchors_with_margin(image, anchor: str) -> None:
    rgb = image("flat-dark", 0)
    spec = MarkSpec.shipped(text="SAI test", position=anchor, margin=0.05, scale=0.06)
    y0, x0, y1, x1 = _bbox(rgb, apply_visible(rgb, spec))
    row, col = divmod(ANCHORS.index(anchor), 3)
    margin = 0.05 * 256
    cy, cx = (y0 + y1) / 2, (x0 + x1) / 2
    assert [cy < 256 / 3, 256 / 3 <= cy <= 2 * 256 / 3, cy > 2 * 256 / 3][row], (anchor, cy)
    assert [cx < 256 / 2, abs(cx - 128) < 4, cx > 256 / 2][col], (anchor, cx)
    assert y0 >= margin - 1 and x0 >= margin - 1 and y1 <= 256 - margin and x1 <= 256 - margin


@pytest.mark.parametrize("kind", ["flat-light", "flat-dark", "smooth", "noise"])
def test_text_mark_is_legible_on_light_and_dark(image, kind: str) -> None:
    rgb = image(kind, 0)
    spec = MarkSpec.shipped(text="SAI job 2026-11-26", scale=0.05, opacity=0.6)
    marked = apply_visible(rgb, spec)
    _, alpha, region = overlay(spec, rgb.shape)
    lum = cv2.cvtColor(marked[region], cv2.COLOR_RGB2GRAY).astype(int)
    fill = alpha > 0.55  # the light fill and the dark outline are both present at full coverage
    assert lum[fill].max() - lum[fill].min() >= 100, kind
    assert mark_score(marked, spec) >= PRESENT_THRESHOLD
    assert mark_score(rgb, spec) < PRESENT_THRESHOLD


def test_visible_detection_false_positive_rate(image) -> None:
    spec = MarkSpec.shipped(text="SAI j0001 2026-11-26")
    scores = [mark_score(image(kind, seed), spec) for kind in ("smooth", "gradient", "noise") for seed in range(8)]
    assert max(scores) < PRESENT_THRESHOLD


def test_angle_scale_opacity_and_tiling(image) -> None:
    rgb = image("smooth", 2)
    flat = overlay(MarkSpec.shipped(text="SAI rotated mark", scale=0.05), rgb.shape)[1]
    turned = overlay(MarkSpec.shipped(text="SAI rotated mark", scale=0.05, angle=45), rgb.shape)[1]
    assert flat.shape[1] / flat.shape[0] > 3 and 0.5 < turned.shape[1] / turned.shape[0] < 2
    big = overlay(MarkSpec.shipped(text="SAI", scale=0.1), rgb.shape)[1]
    assert big.shape[0] > 1.6 * overlay(MarkSpec.shipped(text="SAI", scale=0.05), rgb.shape)[1].shape[0]
    assert np.array_equal(apply_visible(rgb, MarkSpec.shipped(text="SAI", opacity=0.0)), rgb)
    tiled = MarkSpec.shipped(kind="tiled", text="SAI j1", angle=30, opacity=0.3)
    changed = np.any(apply_visible(rgb, tiled) != rgb, axis=-1)
    for quarter in (changed[:128, :128], changed[:128, 128:], changed[128:, :128], changed[128:, 128:]):
        assert quarter.mean() > 0.03
    assert mark_score(apply_visible(rgb, tiled), tiled) >= PRESENT_THRESHOLD


def test_logo_mark(image, tmp_path: Path) -> None:
    logo = np.zeros((40, 80, 4), np.uint8)
    cv2.circle(logo, (40, 20), 18, (0, 0, 255, 255), -1)
    cv2.putText(logo, "S", (30, 30), cv2.FONT_HERSHEY_SIMPLEX, 0.9, (255, 255, 255, 255), 2)
    path = tmp_path / "logo.png"
    cv2.imwrite(str(path), logo)
    spec = MarkSpec.shipped(kind="logo", logo=str(path), scale=0.2, position="top-left")
    rgb = image("gradient", 1)
    marked = apply_visible(rgb, spec)
    y0, x0, y1, x1 = _bbox(rgb, marked)
    assert y1 < 128 and x1 < 128  # top-left, transparent corners untouched
    assert mark_score(marked, spec) >= PRESENT_THRESHOLD > mark_score(rgb, spec)
    from daemon.crypto import WatermarkError

    with pytest.raises(WatermarkError, match="cannot be read"):
        apply_visible(rgb, MarkSpec.shipped(kind="logo", logo=str(tmp_path / "missing.png")))


def test_spec_json_round_trip() -> None:
    spec = MarkSpec.shipped(kind="tiled", text="x", color=(1, 2, 3), angle=12.5)
    assert MarkSpec.from_json(spec.to_json()) == spec
