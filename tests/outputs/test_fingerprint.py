"""The robust invisible mark (daemon.outputs.fingerprint): the job's fingerprint comes back, error
corrected, after ordinary handling; unmarked, garbled or mirrored images read as "no mark"; images
too small say so. Rates over many images are measured by bench/provenance.py (docs/provenance.md)."""

from __future__ import annotations

import io
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image

from daemon.outputs import fingerprint as robust
from daemon.outputs import watermark
from daemon.outputs.pipeline import OutputSettings, export_output, inspect_png, mark_image, protect_image
from daemon.outputs.png import encode_png
from tests.outputs.out_helpers import FIXED_TIME, keys_dir, keystore, make_info, out_dir, synthetic  # noqa: F401  (fixtures)


def _jpeg(q: int) -> Callable[[np.ndarray], np.ndarray]:
    def run(rgb: np.ndarray) -> np.ndarray:
        data = cv2.imencode(".jpg", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, q])[1]
        return cv2.cvtColor(cv2.imdecode(data, cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)
    return run


def _webp(rgb: np.ndarray) -> np.ndarray:
    out = io.BytesIO()
    Image.fromarray(rgb).save(out, "WEBP", quality=80)
    return np.asarray(Image.open(io.BytesIO(out.getvalue())).convert("RGB"))


def _half(rgb: np.ndarray) -> np.ndarray:
    return cv2.resize(rgb, (rgb.shape[1] // 2, rgb.shape[0] // 2), interpolation=cv2.INTER_AREA)


def _crop(rgb: np.ndarray) -> np.ndarray:
    h, w = rgb.shape[:2]
    return rgb[h // 10: h - h // 10, w // 10: w - w // 10].copy()


def _brighter(rgb: np.ndarray) -> np.ndarray:
    return np.clip(np.rint(rgb * 1.2), 0, 255).astype(np.uint8)


ATTACKS = {"jpeg75": _jpeg(75), "jpeg50": _jpeg(50), "webp80": _webp, "half": _half, "crop10": _crop,
           "brighter20": _brighter}


def _tiny_like(seed: int, size: int = 512) -> np.ndarray:
    """What the tiny random models decode to: 8x8-pixel VAE blocks of saturated colour, smoothed."""
    rng = np.random.default_rng(seed)
    coarse = rng.normal(140, 60, (size // 8, size // 8, 3))
    img = cv2.GaussianBlur(cv2.resize(coarse, (size, size), interpolation=cv2.INTER_LINEAR), (0, 0), 1.0)
    return np.clip(np.rint(img), 0, 255).astype(np.uint8)


IMAGES: dict[str, Callable[[int], np.ndarray]] = {
    "smooth": lambda seed: synthetic("smooth", seed, 512),
    "gradient": lambda seed: synthetic("gradient", seed, 512),
    "tiny-like": _tiny_like,
}


@pytest.mark.parametrize("kind", sorted(IMAGES))
@pytest.mark.parametrize("attack", sorted(ATTACKS))
def test_fingerprint_survives(kind: str, attack: str, request: pytest.FixtureRequest) -> None:
    if (kind, attack) == ("gradient", "webp80"):
        request.applymarker(pytest.mark.xfail(strict=True, reason=(
            "known limit: WebP q80 smooths the mark out of a plain gradient with fine noise "
            "(about half such images; docs/provenance.md)")))
    fp = watermark.fingerprint(f"job-{kind}-{attack}")
    marked = robust.embed(IMAGES[kind](len(kind) + len(attack)), fp)
    found = robust.detect(ATTACKS[attack](marked))
    assert found is not None, f"{kind} after {attack}: no mark found"
    assert found.fingerprint == fp and found.corrected <= robust.MAX_CORRECTIONS
    assert found.chance <= 1e-6 and found.confidence >= 1 - 1e-6
    if attack == "half":
        assert found.scale == pytest.approx(2.0, rel=0.03)


def test_larger_output_and_lossless_copy() -> None:
    fp = watermark.fingerprint("job-1024")
    marked = robust.embed(synthetic("smooth", 4, 1024), fp)
    found = robust.detect(marked)
    assert found is not None and found.fingerprint == fp and found.corrected == 0 and found.scale == 1.0
    assert robust.detect(_jpeg(75)(_half(marked))) is not None


def test_unmarked_images_read_as_no_mark() -> None:
    """A few hundred unmarked images of varied kinds and sizes: never a fingerprint (the full
    10,000-image run is bench/provenance.py --fp 10000)."""
    rng = np.random.default_rng(17)
    kinds = ("smooth", "gradient", "noise", "flat-light", "flat-dark")
    for n in range(240):
        size = int(rng.choice([256, 320]))
        rgb = synthetic(kinds[n % len(kinds)], 5000 + n, size) if n % 6 else _tiny_like(n, size)
        assert robust.detect(rgb) is None, (n, kinds[n % len(kinds)], size)


def test_garbled_words_are_not_another_job() -> None:
    """Up to 3 wrong symbols are corrected; 4 or 5 (the code could correct 4) give no mark, never a
    different fingerprint: another codeword is at least 9 symbols away."""
    fp = watermark.fingerprint("job-garbled")
    clean = robust.encode_bits(fp)
    rng = np.random.default_rng(3)
    for wrong in range(0, 6):
        for _ in range(20):
            soft = clean.copy().reshape(-1, 8)
            for byte in rng.choice(len(soft), wrong, replace=False):
                soft[byte, rng.integers(0, 8)] *= -1
            decoded = robust._decode(soft.ravel())
            if wrong <= robust.MAX_CORRECTIONS:
                assert decoded == (fp, wrong)
            else:
                assert decoded is None


def test_mirrored_or_other_layout_marks_are_not_read_as_a_job() -> None:
    fp = watermark.fingerprint("job-mirror")
    marked = robust.embed(synthetic("smooth", 9, 512), fp)
    for changed in (marked[:, ::-1], marked[::-1], np.rot90(marked)):
        found = robust.detect(np.ascontiguousarray(changed))
        assert found is None or found.fingerprint == fp
    other = watermark.mark(synthetic("smooth", 9, 512), fp, "dwtdct")
    assert robust.detect(other) is None  # the old mark is not mistaken for the new one


def test_small_images_say_they_cannot_carry_it() -> None:
    """The robust mark needs 512x512; from 256x256 pixels the dwtdct mark is used instead."""
    small = synthetic("smooth", 1, 384)
    assert not robust.can_carry(small.shape) and robust.can_carry((512, 700, 3))
    assert [watermark.method_for(shape, "robust") for shape in ((512, 512, 3), (384, 384, 3), (128, 128, 3))] \
        == ["robust", "dwtdct", None]
    assert watermark.too_small(small.shape, "robust") == \
        "a 384x384 image is too small for the sai-mark/2 mark (needs at least 512x512)"
    assert watermark.too_small((512, 512, 3), "robust") is None
    with pytest.raises(ValueError, match="too small"):
        robust.embed(small, watermark.fingerprint("j"))
    assert robust.detect(small) is None  # reading any size is allowed; nothing there
    fallback = watermark.mark(small, watermark.fingerprint("j"), "robust")
    assert watermark.read_invisible(fallback).matches("j")


def test_bound_is_stated_and_small() -> None:
    assert robust.false_positive_bound(1) < 1e-9
    assert robust.false_positive_bound() <= 1e-6
    assert robust.false_positive_bound(1, 0) == pytest.approx(256.0 ** -robust.PARITY_BYTES)


def test_embedding_is_pure_and_quiet() -> None:
    rgb = synthetic("smooth", 2, 512)
    before = rgb.copy()
    a = robust.embed(rgb, watermark.fingerprint("job-pure"))
    assert np.array_equal(rgb, before) and np.array_equal(a, robust.embed(rgb, watermark.fingerprint("job-pure")))
    assert cv2.PSNR(a, rgb) >= 38


def test_exported_then_recompressed_output_is_identified(keystore, out_dir, tmp_path) -> None:
    """Through the real output path: a PNG exported, re-encoded as JPEG q75, stripped of metadata
    and saved again as PNG still names its job (via the manifests of the outputs directory)."""
    protect_image(synthetic("smooth", 21, 512), make_info("j-robust-1"), keystore, OutputSettings.defaults(), out_dir)
    exported = tmp_path / "exported.png"
    exported.write_bytes(export_output(out_dir, "j-robust-1", 0, keystore))
    report = inspect_png(exported)["invisible"]
    assert report["method"] == "sai-mark/2" and report["matched_job"] == "j-robust-1"
    assert report["match_source"] == "png metadata" and report["corrected"] == 0
    degraded = tmp_path / "degraded.png"
    rgb = np.asarray(Image.open(exported).convert("RGB"))
    degraded.write_bytes(encode_png(_jpeg(75)(_crop(rgb))))
    again = inspect_png(degraded, out_dir)["invisible"]
    assert again["fingerprint"] == watermark.fingerprint("j-robust-1").hex()
    assert again["matched_job"] == "j-robust-1" and again["match_source"].startswith("manifest in")


def test_outputs_with_the_old_mark_still_verify(keystore, out_dir, tmp_path) -> None:
    """Outputs written with the dwtdct mark (before the robust one, or with invisible_method =
    "dwtdct") are read with it: the robust detector finds nothing and the old reading matches."""
    old = OutputSettings.defaults(invisible_method="dwtdct", visible=False)
    out = protect_image(synthetic("smooth", 22, 512), make_info("j-old-1"), keystore, old, out_dir)
    assert out.manifest["watermark"] == {"visible": False, "invisible": True, "invisible_method": "sai-mark/1"}
    exported = tmp_path / "old.png"
    exported.write_bytes(export_output(out_dir, "j-old-1", 0, keystore))
    report = inspect_png(exported)["invisible"]
    assert report["method"] == "sai-mark/1" and report["present"] and report["matched_job"] == "j-old-1"
    assert report["bit_accuracy"] == 1.0


def _tiny_outputs(model: Path, target: Path, count: int) -> np.ndarray:
    """`count` real 512x512 outputs of the tiny model (2 steps, seeds 0.., fixed prompts), made in a
    subprocess so torch stays out of the tests."""
    script = ("import sys, numpy as np, torch; from diffusers import DiffusionPipeline\n"
              "pipe = DiffusionPipeline.from_pretrained(sys.argv[1], local_files_only=True)\n"
              "pipe.set_progress_bar_config(disable=True)\n"
              "images = [pipe(prompt=f'a harbour at dusk, view {n}', width=512, height=512, num_inference_steps=2,\n"
              "               generator=torch.Generator().manual_seed(n), output_type='np').images[0]\n"
              "          for n in range(int(sys.argv[3]))]\n"
              "np.save(sys.argv[2], np.rint(np.clip(np.stack(images), 0, 1) * 255).astype(np.uint8))\n")
    subprocess.run([sys.executable, "-c", script, str(model), str(target), str(count)], check=True,
                   capture_output=True, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    return np.load(target)


def test_every_tiny_output_reads_back_without_correction(tiny_model: Path, tmp_path: Path) -> None:
    """The real output path's pixels (visible mark, then the robust mark) on real tiny-model outputs,
    whose 8-pixel VAE grid folds onto the tile: the lossless copy and its centre crop read back with
    no symbol corrected, and a JPEG q75 of it at half size still names the job. Before the detector
    took out the fold's 8-periodic part and embedding went on until the mark read back cleanly,
    about 1 in 25 such images had no readable mark even losslessly (a CI run of `sai identify`)."""
    settings = OutputSettings.defaults()
    for n, rgb in enumerate(_tiny_outputs(tiny_model, tmp_path / "tiny.npy", 24)):
        info = make_info(f"j-tiny-{n:02d}")
        marked, _, invisible = mark_image(rgb, info, settings, FIXED_TIME, {})
        fp = watermark.fingerprint(info.job_id)
        assert invisible
        for view, image in (("lossless", marked), ("centre crop", _crop(marked))):
            found = robust.detect(image)
            assert found is not None and found.fingerprint == fp and found.corrected == 0, (n, view, found)
        shared = robust.detect(_jpeg(75)(cv2.resize(marked, (256, 256), interpolation=cv2.INTER_AREA)))
        assert shared is not None and shared.fingerprint == fp, (n, "JPEG q75 at half size")
