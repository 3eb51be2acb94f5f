"""The robust invisible mark ("sai-mark/2"): the job's 64-bit fingerprint, Reed-Solomon coded,
spread over a periodic luma pattern that survives re-encoding, resizing, cropping and level changes.

Layout. A tile of 128×128 pixels is a 32×32 grid of 4×4-pixel chips. A fixed pseudo-random
permutation (seeded by `LAYOUT_SEED`) gives 256 chips to a known synchronisation pattern and 768
to data: 6 chips for each of the 128 coded bits (the 8 fingerprint bytes + 8 Reed-Solomon parity
bytes over GF(256), scrambled with a fixed mask so that no flat or periodic image reads as a
codeword). Each chip is +1 or -1 times a fixed random carrier sign; the chip grid is smoothed with
a periodic Gaussian and added, tiled from the top-left corner, to the luma of every pixel (the same
amount to R, G and B, so chroma is untouched), scaled by a local-activity mask.

Embedding is informed: after adding the pattern, each bit's detector statistic is measured on the
marked image, and each bit's gain is moved by what it lacks to reach `TARGET` (a bit's statistic
grows about linearly with its gain: the step is the shortfall over the median statistic per unit
of gain), between `MIN_GAIN` and `MAX_BOOST`. Bits whose host interference pulls them down get
just the energy they need, and bits the host already helps give some back: on noise-like images
this reaches a higher margin than multiplying weak bits' gains (which overshot to the maximum for
any bit the host opposed) for ~1.3 dB less pattern energy (docs/provenance.md "Visual cost"). The
statistic is measured on the whole image and on its centre without 10% of each edge (the cropped
copy most often made); a bit's margin is the weaker of the two. If after `EMBED_PASSES` the mark
does not read back through `detect`'s own path with no symbol corrected, in both views, up to
`RESCUE_PASSES` more let gains go to `RESCUE_BOOST`, only up (lowering some bits while raising
others see-sawed): the few bits a busy host opposes hardest get what they need, and the code's
whole correcting power is left for what happens to the image later.

Detection (`detect`): luma → high-pass → clipped to ±3σ → folded into one 128×128 tile (a crop
only shifts the fold cyclically) less the fold's 8-periodic part (diffusion VAEs decode in 8×8
blocks whose grid folds coherently onto the tile; the mark has ~0.3% of its energy there) → FFT
cross-correlation with the sync pattern gives the shift → soft bits → hard bits → Reed-Solomon
decode. It tries a list of scale factors (the image as it is, then the factors that map it back to
the usual output sizes and common resizes), the best `PEAKS` distinct sync peaks at each and the
8 shifts around each peak (the correlation is broad, and the host's slope across it often moves
the peak by a pixel); of the decodes around a peak, the one with fewest corrections wins, and the
first peak with one ends the search. A decode counts only if it needed at most
`MAX_CORRECTIONS` of the code's 4 correctable symbols. A random 128-bit word decodes so with
probability `false_positive_bound(1)` ≈ 5.0e-10; over all the attempts on one image
`false_positive_bound()` ≈ 1.1e-7.

Everything here is pure (arrays in, arrays out) so it can run in a process pool.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from functools import cache

import cv2
import numpy as np
from reedsolo import ReedSolomonError, RSCodec  # type: ignore[import-untyped]

METHOD = "sai-mark/2"
TILE = 128
CHIP = 4
GRID = TILE // CHIP
DATA_BYTES = 8
PARITY_BYTES = 8
CODED_BITS = 8 * (DATA_BYTES + PARITY_BYTES)
SYNC_CHIPS = 256
LAYOUT_SEED = 0x5A1_0002
MAX_CORRECTIONS = 3
AMPLITUDE = 2.2  # luma levels (rms of the pattern before masking)
TARGET = 1.0  # per-bit statistic, in units of AMPLITUDE, that informed embedding aims at
MAX_BOOST = 2.5
MIN_GAIN = 0.8  # a bit the host already carries past TARGET keeps at least this gain
EMBED_PASSES = 4
RESCUE_PASSES = 4  # more passes, up to RESCUE_BOOST, for an image the detector cannot read yet
RESCUE_BOOST = 6.0
MASK_MAX = 1.5  # the activity mask's most (busy texture); PSNR on noise-like images depends on it
SYNC_Z = 6.5  # z-score the sync peak is boosted to at embedding (the highest of 16,384 noise shifts is ~4.5)
MIN_SIDE = 512  # below, busy images cannot hold 16 tiles' worth of signal (daemon.outputs.watermark falls back)
PEAKS = 2
NEAR = tuple((dy, dx) for dy in (-1, 0, 1) for dx in (-1, 0, 1))
"""The shifts decoded around a sync peak: it and its 8 neighbours."""
NEIGHBOURHOOD = len(NEAR)
SMOOTH_SIGMA = 1.2
HIGHPASS_SIGMA = 3.0
USUAL_SIDES = (512, 576, 640, 704, 768, 832, 896, 960, 1024, 1152, 1280, 1536, 2048)
COMMON_FACTORS = (2.0, 0.8, 1.25, 1.5, 4 / 3, 0.75)
MAX_SCALES = 12
GRID_PERIOD = 8


@dataclass(frozen=True)
class Layout:
    sync_mask: np.ndarray  # (GRID, GRID) bool
    bit_of_chip: np.ndarray  # (GRID, GRID) int, -1 on sync chips
    carrier: np.ndarray  # (GRID, GRID) ±1
    scramble: bytes


@cache
def layout() -> Layout:
    rng = np.random.default_rng(LAYOUT_SEED)
    order = rng.permutation(GRID * GRID)
    bit_of_chip = np.full(GRID * GRID, -1, dtype=np.int64)
    bit_of_chip[order[SYNC_CHIPS:]] = np.arange(GRID * GRID - SYNC_CHIPS) % CODED_BITS
    carrier = rng.choice(np.array([-1.0, 1.0]), size=(GRID, GRID))
    scramble = rng.integers(0, 256, DATA_BYTES + PARITY_BYTES, dtype=np.uint8).tobytes()
    grid = bit_of_chip.reshape(GRID, GRID)
    return Layout(grid < 0, grid, carrier, scramble)


@cache
def _codec() -> RSCodec:
    return RSCodec(PARITY_BYTES)


def _render(chips: np.ndarray) -> np.ndarray:
    """A (GRID, GRID) chip grid → a smooth periodic (TILE, TILE) float pattern."""
    tile = np.kron(chips, np.ones((CHIP, CHIP)))
    freq = np.fft.fftfreq(TILE)
    gauss = np.exp(-2 * (math.pi * SMOOTH_SIGMA) ** 2 * (freq[:, None] ** 2 + freq[None, :] ** 2))
    return np.real(np.fft.ifft2(np.fft.fft2(tile) * gauss))


@cache
def _templates() -> tuple[np.ndarray, np.ndarray]:
    """(sync pattern, data carrier pattern), each (TILE, TILE), unit chips."""
    lay = layout()
    sync = _render(np.where(lay.sync_mask, lay.carrier, 0.0))
    data = _render(np.where(lay.sync_mask, 0.0, lay.carrier))
    return sync, data


def encode_bits(fp: bytes) -> np.ndarray:
    """The 128 coded, scrambled bits of a 64-bit fingerprint, as ±1."""
    if len(fp) != DATA_BYTES:
        raise ValueError(f"a fingerprint is {DATA_BYTES} bytes, got {len(fp)}")
    word = bytes(a ^ b for a, b in zip(bytes(_codec().encode(fp)), layout().scramble, strict=True))
    return np.unpackbits(np.frombuffer(word, np.uint8)).astype(np.float64) * 2 - 1


def can_carry(shape: tuple[int, ...]) -> bool:
    return min(shape[0], shape[1]) >= MIN_SIDE


def _luma(rgb: np.ndarray) -> np.ndarray:
    return rgb[..., 0] * 0.299 + rgb[..., 1] * 0.587 + rgb[..., 2] * 0.114


def _activity_mask(luma: np.ndarray) -> np.ndarray:
    """More pattern where the image is busy, less on flat areas and near black/white; mean ~1."""
    blur = cv2.GaussianBlur(luma, (0, 0), 2.0)
    local = np.sqrt(np.maximum(cv2.GaussianBlur((luma - blur) ** 2, (0, 0), 4.0), 0))
    mask = np.clip(0.9 + local / 15.0, 0.9, MASK_MAX)
    headroom = np.clip(np.minimum(blur, 255 - blur) / 24.0, 0.3, 1.0)
    return mask * headroom


def _chip_pattern(bits: np.ndarray, gains: np.ndarray, sync_gain: float) -> np.ndarray:
    lay = layout()
    bit = np.maximum(lay.bit_of_chip, 0)
    values = np.where(lay.sync_mask, sync_gain, bits[bit] * gains[bit])
    return _render(values * lay.carrier)


def _tiled(tile: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    reps = (-(-shape[0] // TILE), -(-shape[1] // TILE))
    return np.tile(tile, reps)[: shape[0], : shape[1]]


def embed(rgb: np.ndarray, fp: bytes, amplitude: float = AMPLITUDE) -> np.ndarray:
    """A copy of `rgb` (H, W, 3 uint8) carrying `fp`; ValueError if the image is too small."""
    if not can_carry(rgb.shape):
        raise ValueError(f"a {rgb.shape[1]}x{rgb.shape[0]} image is too small for the invisible mark "
                         f"(needs at least {MIN_SIDE}x{MIN_SIDE} pixels)")
    bits = encode_bits(fp)
    src = rgb.astype(np.float32)
    luma = _luma(src)
    mask = _activity_mask(luma) * amplitude
    gains = np.ones(CODED_BITS)
    sync_gain = 1.0
    out = rgb
    h, w = luma.shape
    dy, dx = h // 10, w // 10
    for step in range(EMBED_PASSES + RESCUE_PASSES):
        delta = _tiled(_chip_pattern(bits, gains, sync_gain), luma.shape) * mask
        out = np.clip(np.rint(src + delta[..., None]), 0, 255).astype(np.uint8)
        marked = _luma(out.astype(np.float32))
        centre = marked[dy:h - dy, dx:w - dx]
        folds = ((_fold(_highpass(marked)), (0, 0), marked.shape),
                 (_fold(_highpass(centre)), (-dy % TILE, -dx % TILE), centre.shape))
        soft = [_soft_bits(f, at) for f, at, _ in folds]
        maps = [_sync_map(f) for f, _, _ in folds]
        rescue = step >= EMBED_PASSES - 1
        if rescue and all(_reads_clean(fp, z, at, read) for z, (_, at, _), read in zip(maps, folds, soft, strict=True)):
            break
        cap = RESCUE_BOOST if rescue else MAX_BOOST
        margin = np.min([s * bits / _unit_gain(shape) for s, (_, _, shape) in zip(soft, folds, strict=True)],
                        axis=0) / amplitude
        sync_z = min(float(z[at]) for z, (_, at, _) in zip(maps, folds, strict=True))
        if sync_z < SYNC_Z and sync_gain < cap:
            sync_gain = min(sync_gain * float(np.clip(SYNC_Z / max(sync_z, 1.0), 1.2, 2.0)), cap)
        elif not (margin < TARGET).any():
            break
        per_gain = max(float(np.median(margin / gains)), 0.2)
        moved = np.clip(gains + (TARGET - margin) / per_gain, MIN_GAIN, cap)
        gains = np.maximum(gains, moved) if rescue else moved  # rescue passes only add: no see-saw between bits
    return out


@cache
def _unit_gain_tile() -> float:
    """The statistic one bit reads per tile for a unit pattern, after the detector's high-pass."""
    _, data = _templates()
    return float(np.sum(_highpass(data.astype(np.float32)) * data)) / CODED_BITS


def _reads_clean(fp: bytes, z: np.ndarray, shift: tuple[int, int], soft: np.ndarray) -> bool:
    """Whether `detect` finds `fp` in a fold with no symbol to correct (the code's whole correcting
    power is then left for what a re-encode or resize does to the image): the first peak of the
    fold's sync map `z` is within a pixel of the mark's `shift`, where the bits (`soft`) decode with
    none corrected. One decode, where `detect` makes nine."""
    (peak, _), = _sync_peaks(z, 1)
    return _cyclic_distance(peak, shift) <= 1 and _decode(soft) == (fp, 0)


def _unit_gain(shape: tuple[int, ...]) -> float:
    return _unit_gain_tile() * (shape[0] * shape[1]) / (TILE * TILE)


def _highpass(luma: np.ndarray) -> np.ndarray:
    hp = luma - cv2.GaussianBlur(luma, (0, 0), HIGHPASS_SIGMA)
    limit = 3.0 * float(np.std(hp)) + 1e-6
    return np.clip(hp, -limit, limit)


def _fold(hp: np.ndarray) -> np.ndarray:
    h, w = hp.shape
    padded = np.zeros((-(-h // TILE) * TILE, -(-w // TILE) * TILE), np.float64)
    padded[:h, :w] = hp
    folded = padded.reshape(padded.shape[0] // TILE, TILE, padded.shape[1] // TILE, TILE).sum(axis=(0, 2))
    return folded - _periodic(folded, GRID_PERIOD)


def _periodic(folded: np.ndarray, period: int) -> np.ndarray:
    """The part of a fold that repeats every `period` pixels both ways (its mean period × period cell, tiled)."""
    cell = folded.reshape(TILE // period, period, TILE // period, period).mean(axis=(0, 2))
    return np.tile(cell, (TILE // period, TILE // period))


def _soft_bits(folded: np.ndarray, shift: tuple[int, int]) -> np.ndarray:
    lay = layout()
    _, data = _templates()
    aligned = np.roll(folded, (-shift[0], -shift[1]), axis=(0, 1)) * data
    per_chip = aligned.reshape(GRID, CHIP, GRID, CHIP).sum(axis=(1, 3))
    keep = ~lay.sync_mask
    return np.bincount(lay.bit_of_chip[keep], weights=per_chip[keep], minlength=CODED_BITS)


def _sync_map(folded: np.ndarray) -> np.ndarray:
    """z-scores of the sync pattern's correlation at every cyclic shift of the fold."""
    sync, _ = _templates()
    corr = np.real(np.fft.ifft2(np.fft.fft2(folded) * np.conj(np.fft.fft2(sync))))
    return (corr - corr.mean()) / (corr.std() + 1e-12)


def _sync_peaks(z: np.ndarray, count: int) -> list[tuple[tuple[int, int], float]]:
    """The `count` best shifts of the sync map `z`, each at least 2 pixels (cyclically) from the
    others: the correlation is smooth, so a peak's neighbours score nearly as high and are not other
    candidates."""
    peaks: list[tuple[tuple[int, int], float]] = []
    for i in np.argsort(z.ravel())[::-1][:64]:
        at = (int(i // TILE), int(i % TILE))
        if all(_cyclic_distance(at, other) >= 2 for other, _ in peaks):
            peaks.append((at, float(z.flat[i])))
            if len(peaks) == count:
                break
    return peaks


def _cyclic_distance(a: tuple[int, int], b: tuple[int, int]) -> int:
    return max(min((a[k] - b[k]) % TILE, (b[k] - a[k]) % TILE) for k in (0, 1))


def _candidates(folded: np.ndarray) -> Iterator[list[tuple[tuple[int, int], float]]]:
    """For each of the `PEAKS` sync peaks, best first: the peak and its 8 neighbours, by z-score.
    The sync correlation is broad (a neighbour scores ~0.93 of the peak), so the host's own slope
    across it moves the peak a pixel off the mark about as often as not."""
    z = _sync_map(folded)
    for (y, x), _ in _sync_peaks(z, PEAKS):
        near = [((y + dy) % TILE, (x + dx) % TILE) for dy, dx in NEAR]
        yield [(at, float(z[at])) for at in sorted(near, key=lambda at: (at != (y, x), -z[at]))]


def _read_fold(folded: np.ndarray) -> tuple[bytes, int, tuple[int, int], float, int] | None:
    """The best decode around the first sync peak that has one: (fingerprint, corrections, shift, z,
    attempts). Every shift around the peak is decoded and the one needing fewest corrections wins: a
    pixel off, the bits mostly still read, and the first decode may have spent corrections the mark's
    own shift does not need."""
    attempts = 0
    for shifts in _candidates(folded):
        decodes = [(decoded, shift, z) for shift, z in shifts if (decoded := _decode(_soft_bits(folded, shift)))]
        attempts += len(shifts)
        if decodes:
            (fingerprint, corrected), shift, z = min(decodes, key=lambda found: found[0][1])
            return fingerprint, corrected, shift, z, attempts
    return None


@dataclass(frozen=True)
class Detection:
    """A decoded mark: the fingerprint, how many RS symbols were corrected, where it was found."""

    fingerprint: bytes
    corrected: int
    scale: float  # factor the image was resized by before decoding (2.0: it had been halved)
    shift: tuple[int, int]
    sync_z: float
    attempts: int

    @property
    def hex(self) -> str:
        return self.fingerprint.hex()

    @property
    def chance(self) -> float:
        """Bound on reading this from an unmarked image: corrections used, attempts made."""
        return false_positive_bound(self.attempts, self.corrected)

    @property
    def confidence(self) -> float:
        return 1.0 - self.chance


def false_positive_bound(attempts: int | None = None, corrections: int = MAX_CORRECTIONS) -> float:
    """Probability that random words decode within `corrections` symbols in `attempts` tries."""
    n = DATA_BYTES + PARITY_BYTES
    ball = sum(math.comb(n, i) * 255 ** i for i in range(corrections + 1))
    tries = attempts if attempts is not None else MAX_SCALES * PEAKS * NEIGHBOURHOOD
    return min(1.0, tries * ball / 256.0 ** PARITY_BYTES)


def _decode(soft: np.ndarray) -> tuple[bytes, int] | None:
    bits = (soft > 0).astype(np.uint8)
    word = bytes(a ^ b for a, b in zip(np.packbits(bits).tobytes(), layout().scramble, strict=True))
    try:
        message, _, errata = _codec().decode(word)
    except ReedSolomonError:
        return None
    if len(errata) > MAX_CORRECTIONS:
        return None
    return bytes(message), len(errata)


def scale_factors(shape: tuple[int, ...]) -> list[float]:
    """Factors to try, 1 first: back to the usual output sizes, then common resizes."""
    side = max(shape[0], shape[1])
    found: list[float] = [1.0]
    candidates: Iterable[float] = [s / side for s in USUAL_SIDES] + list(COMMON_FACTORS)
    for f in candidates:
        if 0.7 <= f <= 4.1 and all(abs(f / g - 1) > 0.02 for g in found):
            found.append(f)
    return found[:MAX_SCALES]


def detect(rgb: np.ndarray) -> Detection | None:
    """The fingerprint carried by an RGB uint8 image of any size, or None: no mark found."""
    luma = _luma(rgb.astype(np.float32))
    attempts = 0
    for factor in scale_factors(luma.shape):
        size = (round(luma.shape[1] * factor), round(luma.shape[0] * factor))
        if min(size) < TILE:
            continue
        scaled = luma if factor == 1.0 else cv2.resize(
            luma, size, interpolation=cv2.INTER_CUBIC if factor > 1 else cv2.INTER_AREA)
        read = _read_fold(_fold(_highpass(scaled)))
        if read is not None:
            fingerprint, corrected, shift, z, tries = read
            return Detection(fingerprint, corrected, factor, shift, z, attempts + tries)
        attempts += PEAKS * NEIGHBOURHOOD
    return None
