"""The invisible job fingerprint: which mark to embed, and reading either of the two marks.

Two methods (`watermark.invisible_method`): "robust" (daemon.outputs.fingerprint, "sai-mark/2",
Reed-Solomon coded, survives JPEG, WebP, resizing, cropping and level changes; the default) and
"dwtdct" (the first mark, below, "sai-mark/1": survives lossless copies only). Outputs written
before the robust mark carry dwtdct and are still read with it (`report`).

The dwtdct mark. Fingerprint: the first 64 bits of SHA-256("sai-fingerprint-v1\\0" ‖ job id). Embedded with the
`dwtDct` method of invisible-watermark (`imwatermark.maxDct.EmbedMaxDct`'s block rule, default
strength 36, 4×4 blocks of the Haar approximation band of the U channel), so the stock
`imwatermark.WatermarkDecoder("bits", 64).decode(bgr, "dwtDct")` reads our marks.

Four things differ from calling `WatermarkEncoder.encode(bgr, "dwtDct")`, each measured:
- the library applies its rule block by block in Python (5 ms for the 1,024 blocks of a 256×256
  image, half of the mark's cost); `_embed_blocks` applies the same rule to every block at once
  with numpy (0.13 ms), with bit-identical results (tests/outputs/test_watermark.py);
- the package `__init__` imports torch (for rivaGan, 2.9 s and ~400 MB): nothing here imports
  it, and `_library()` loads only its `maxDct` module file (for the tests that hold
  `_embed_blocks` to the library's rule);
- its `encode` writes floats back into a uint8 array (values past 0/255 wrap around: PSNR 15 dB
  on a noise image) and swaps the horizontal and vertical detail bands on the inverse transform;
  we round, clip and keep the bands in order (PSNR ~40 dB);
- the rule quantises the largest coefficient of each block, which can stop being the largest
  (or tie with another after rounding), so 10–50% of blocks read back wrong and a few of the 64
  bits fail even after a lossless round trip. We read the marked image back block by block and
  re-quantise the blocks that did not take onto the library's own levels, (k + 0.25 + 0.5·bit) ×
  strength, choosing the nearest level that keeps the coefficient the largest of its block by
  `ARGMAX_MARGIN` (at most `REPAIR_PASSES` passes). PNG round trips then read back 100%.
"""

from __future__ import annotations

import hashlib
import importlib.util
import math
import sys
from dataclasses import dataclass
from types import ModuleType
from typing import Any

import cv2
import numpy as np

from daemon.outputs import fingerprint as robust

FINGERPRINT_BITS = 64
FINGERPRINT_DOMAIN = b"sai-fingerprint-v1\0"
DEFAULT_STRENGTH = 36
BLOCK = 4
REPAIR_PASSES = 2
ARGMAX_MARGIN = 4.0
MIN_PIXELS = 256 * 256  # invisible-watermark refuses smaller images
METHODS = ("robust", "dwtdct")
MARK_NAMES = {"robust": robust.METHOD, "dwtdct": "sai-mark/1"}
MATCH_ACCURACY = 0.875  # ≥ 56 of 64 bits: a random image matches with probability ~5e-9
PRESENT_CONFIDENCE = 0.5
BALANCED = (12, 52)  # ones in a real fingerprint: outside this range with probability ~3e-7

_maxdct: ModuleType | None = None


def _library() -> ModuleType:
    """`imwatermark.maxDct` without running `imwatermark/__init__.py` (which imports torch)."""
    global _maxdct
    if _maxdct is None:
        if "imwatermark.maxDct" in sys.modules:
            _maxdct = sys.modules["imwatermark.maxDct"]
        else:
            spec = importlib.util.find_spec("imwatermark")
            if spec is None or not spec.submodule_search_locations:
                raise ImportError("invisible-watermark is not installed (pip install invisible-watermark)")
            path = f"{next(iter(spec.submodule_search_locations))}/maxDct.py"
            mspec = importlib.util.spec_from_file_location("_sai_imwatermark_maxdct", path)
            assert mspec is not None and mspec.loader is not None
            module = importlib.util.module_from_spec(mspec)
            mspec.loader.exec_module(module)
            _maxdct = module
    return _maxdct


def fingerprint(job_id: str) -> bytes:
    """The 64-bit fingerprint of a job id."""
    return hashlib.sha256(FINGERPRINT_DOMAIN + job_id.encode("utf-8")).digest()[: FINGERPRINT_BITS // 8]


def _bits(fp: bytes) -> np.ndarray:
    return np.unpackbits(np.frombuffer(fp, dtype=np.uint8)).astype(bool)


def can_carry(shape: tuple[int, ...], method: str = "dwtdct") -> bool:
    """Whether an image of `shape` can carry some invisible mark when `method` is configured."""
    return method_for(shape, method) is not None


def method_for(shape: tuple[int, ...], method: str) -> str | None:
    """The mark an image of `shape` gets when `method` is configured: "robust" needs 512x512; a
    smaller image of at least 256x256 pixels gets "dwtdct" instead (lossless copies only); None
    when it is too small for either."""
    if method == "robust" and robust.can_carry(shape):
        return "robust"
    return "dwtdct" if shape[0] * shape[1] >= MIN_PIXELS else None


def too_small(shape: tuple[int, ...], method: str) -> str | None:
    """Why an image of `shape` cannot carry the `method` mark, or None when it can."""
    if method_for(shape, method) == method:
        return None
    need = f"{robust.MIN_SIDE}x{robust.MIN_SIDE}" if method == "robust" else f"{MIN_PIXELS} pixels"
    return f"a {shape[1]}x{shape[0]} image is too small for the {MARK_NAMES[method]} mark (needs at least {need})"


def mark(rgb: np.ndarray, fp: bytes, method: str = "robust", strength: int = DEFAULT_STRENGTH) -> np.ndarray:
    """`rgb` carrying `fp` with `method` (pure: array in, array out); ValueError when too small."""
    if method not in METHODS:
        raise ValueError(f"unknown invisible mark method {method!r} (one of {', '.join(METHODS)})")
    if method_for(rgb.shape, method) == "robust":
        return robust.embed(rgb, fp)
    return embed_invisible(rgb, fp, strength)


def _u_band(rgb: np.ndarray) -> tuple[np.ndarray, tuple[int, int]]:
    rows, cols = rgb.shape[0] // 4 * 4, rgb.shape[1] // 4 * 4
    yuv = cv2.cvtColor(np.ascontiguousarray(rgb), cv2.COLOR_RGB2YUV)
    return yuv, (rows, cols)


def _block_bits(ca1: np.ndarray, strength: float) -> np.ndarray:
    """The library's `infer_dct_matrix` for every block at once: (R, C) booleans."""
    blocks = _blocks(ca1)
    pos = np.argmax(np.abs(blocks[..., 1:]), axis=-1) + 1
    val = np.abs(np.take_along_axis(blocks, pos[..., None], axis=-1)[..., 0])
    return (val % strength) > 0.5 * strength


def _blocks(band: np.ndarray) -> np.ndarray:
    """The band's whole 4×4 blocks, row-major, as an (R, C, 16) copy."""
    r, c = band.shape[0] // BLOCK, band.shape[1] // BLOCK
    return band[: r * BLOCK, : c * BLOCK].reshape(r, BLOCK, c, BLOCK).transpose(0, 2, 1, 3).reshape(r, c, -1)


def _embed_blocks(ca1: np.ndarray, want: np.ndarray, strength: float) -> None:
    """The library's `encode_frame` rule on every block at once, in place: each block's largest
    coefficient after the first goes to (⌊|v| / strength⌋ + 0.25 + 0.5·bit) × strength, its sign kept.
    `want`: (R, C) bits, the fingerprint repeated over the blocks in row-major order."""
    blocks = _blocks(ca1)
    r, c = want.shape
    pos = np.argmax(np.abs(blocks[..., 1:]), axis=-1)[..., None] + 1
    value = np.take_along_axis(blocks, pos, axis=-1)
    level = (np.floor_divide(np.abs(value), strength) + 0.25 + 0.5 * want[..., None]) * strength
    np.put_along_axis(blocks, pos, np.where(value >= 0.0, level, -level), axis=-1)
    ca1[: r * BLOCK, : c * BLOCK] = blocks.reshape(r, c, BLOCK, BLOCK).transpose(0, 2, 1, 3).reshape(r * BLOCK,
                                                                                                     c * BLOCK)


def _requantise(block: np.ndarray, bit: int, strength: float) -> None:
    """Put the block's largest coefficient on a level that reads `bit` and stays the largest."""
    flat = np.abs(block.ravel())
    pos = int(np.argmax(flat[1:])) + 1
    floor = float(np.delete(flat, [0, pos]).max()) + ARGMAX_MARGIN
    value = float(block.flat[pos])
    k = math.floor(abs(value) / strength)
    levels = [(n + 0.25 + 0.5 * bit) * strength for n in range(k - 1, k + 3)]
    allowed = [level for level in levels if level >= floor]
    if not allowed:
        allowed = [(math.floor(floor / strength) + 1 + 0.25 + 0.5 * bit) * strength]
    target = min(allowed, key=lambda level: abs(level - abs(value)))
    block.flat[pos] = target if value >= 0 else -target


def _read_u(rgb: np.ndarray, strength: float) -> np.ndarray:
    import pywt

    yuv, (rows, cols) = _u_band(rgb)
    ca1 = pywt.dwt2(yuv[:rows, :cols, 1].astype(np.float64), "haar")[0]
    return _block_bits(ca1, strength)


def embed_invisible(rgb: np.ndarray, fp: bytes, strength: int = DEFAULT_STRENGTH) -> np.ndarray:
    """A copy of `rgb` (H, W, 3 uint8) carrying `fp`; ValueError if the image is too small."""
    import pywt

    if not can_carry(rgb.shape):
        raise ValueError(f"a {rgb.shape[1]}x{rgb.shape[0]} image is too small for the invisible mark "
                         f"(needs at least {MIN_PIXELS} pixels)")
    yuv, (rows, cols) = _u_band(rgb)
    ca1, details = pywt.dwt2(yuv[:rows, :cols, 1].astype(np.float64), "haar")
    r, c = ca1.shape[0] // BLOCK, ca1.shape[1] // BLOCK
    want = _bits(fp)[np.arange(r * c) % FINGERPRINT_BITS].reshape(r, c)
    _embed_blocks(ca1, want, strength)
    for attempt in range(REPAIR_PASSES + 1):
        band = pywt.idwt2((ca1, details), "haar")
        yuv[:rows, :cols, 1] = np.clip(np.rint(band), 0, 255).astype(np.uint8)
        out = cv2.cvtColor(yuv, cv2.COLOR_YUV2RGB)
        if attempt == REPAIR_PASSES:
            break
        wrong = np.argwhere(_read_u(out, strength) != want)
        if not len(wrong):
            break
        for i, j in wrong:
            _requantise(ca1[i * BLOCK:(i + 1) * BLOCK, j * BLOCK:(j + 1) * BLOCK], int(want[i, j]), strength)
    return out


@dataclass(frozen=True)
class Reading:
    """What the invisible-mark decoder saw: the 64 bits and how consistently the blocks voted."""

    fingerprint: bytes
    scores: np.ndarray  # per bit, the fraction of its blocks that read 1
    confidence: float  # mean |2·score − 1|: ~1 for a marked image, small for an unmarked one

    @property
    def hex(self) -> str:
        return self.fingerprint.hex()

    @property
    def present(self) -> bool:
        """A heuristic without a job to compare with: the blocks vote consistently and the bits
        look like a hash (a flat image reads a confident but all-zero "fingerprint")."""
        ones = int(np.unpackbits(np.frombuffer(self.fingerprint, np.uint8)).sum())
        return self.confidence >= PRESENT_CONFIDENCE and BALANCED[0] <= ones <= BALANCED[1]

    def accuracy(self, job_id: str) -> float:
        """Fraction of the 64 bits that agree with `job_id`'s fingerprint."""
        return float(np.mean(_bits(self.fingerprint) == _bits(fingerprint(job_id))))

    def matches(self, job_id: str) -> bool:
        return self.accuracy(job_id) >= MATCH_ACCURACY


def read_invisible(rgb: np.ndarray, strength: int = DEFAULT_STRENGTH) -> Reading:
    """Decode the 64-bit fingerprint; same bits as the library's `dwtDct` decoder."""
    if not can_carry(rgb.shape):
        raise ValueError(f"a {rgb.shape[1]}x{rgb.shape[0]} image is too small to carry the invisible mark")
    blocks = _read_u(rgb, strength).ravel()
    index = np.arange(blocks.size) % FINGERPRINT_BITS
    ones = np.bincount(index, weights=blocks.astype(np.float64), minlength=FINGERPRINT_BITS)
    count = np.bincount(index, minlength=FINGERPRINT_BITS)
    scores = ones / np.maximum(count, 1)
    bits = scores * 255 > 127  # the library's threshold
    return Reading(np.packbits(bits).tobytes(), scores, float(np.mean(np.abs(2 * scores - 1))))


def watermark_report(rgb: np.ndarray, strength: int = DEFAULT_STRENGTH) -> dict[str, Any]:
    if not can_carry(rgb.shape):
        return {"present": False, "fingerprint": None, "confidence": None,
                "reason": f"image smaller than {MIN_PIXELS} pixels cannot carry the mark"}
    reading = read_invisible(rgb, strength)
    return {"present": reading.present, "fingerprint": reading.hex, "confidence": round(reading.confidence, 4)}


def report(rgb: np.ndarray, strength: int = DEFAULT_STRENGTH) -> dict[str, Any]:
    """What either mark says about `rgb`: the robust mark first; if it is not found, the dwtdct
    reading (outputs written before the robust mark), whose `present` is a heuristic only."""
    found = robust.detect(rgb)
    if found is not None:
        return {"present": True, "method": robust.METHOD, "fingerprint": found.hex,
                "confidence": found.confidence, "chance": found.chance, "corrected": found.corrected,
                "scale": round(found.scale, 4)}
    legacy = watermark_report(rgb, strength)
    return {**legacy, "method": MARK_NAMES["dwtdct"] if legacy["present"] else None}
