"""Benchmark of the invisible marks: the first one (dwtdct, "sai-mark/1") and the robust one
("sai-mark/2", daemon.outputs.fingerprint) side by side, on the same images. Prints numbers; it
never passes or fails.

    .venv/bin/python bench/provenance.py [--images N] [--fp N] [--tiny N] [--sizes 512,1024]

1. Robustness per transformation: bit accuracy (old: the 64 fingerprint bits; new: the 128 coded
   bits before error correction, best attempt) and detection rate (old: >= 56/64 bits agree with
   the job; new: the Reed-Solomon decode returns exactly the job's fingerprint) over --images
   images per kind (photo-like, gradient, noise, tiny-model output), 512x512.
2. False positives on unmarked images: --fp images (synthetic textures of many kinds and sizes,
   and --tiny tiny-model outputs, cropped and flipped into variants). Old: the `present`
   heuristic; new: any decode at all. With the analytic bound of the new mark.
3. Visual cost: PSNR and SSIM (scikit-image) of each mark against the unmarked image.
4. Time per image to mark and to detect (marked and unmarked input) at each size, photo-like and
   noise-like (the new mark's informed embedding runs all its passes on noise-like images).

The default run takes a few minutes on 2 cores; `--fp 10000 --tiny 16` is the full run quoted
in docs/provenance.md.
"""

from __future__ import annotations

import argparse
import io
import multiprocessing
import statistics
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import cv2
import numpy as np
from PIL import Image
from skimage.metrics import structural_similarity

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from outputs import synthetic

from daemon.outputs import fingerprint as robust
from daemon.outputs import watermark

Attack = Callable[[np.ndarray], np.ndarray]


def _jpeg(q: int) -> Attack:
    def run(rgb: np.ndarray) -> np.ndarray:
        data = cv2.imencode(".jpg", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, q])[1]
        return cv2.cvtColor(cv2.imdecode(data, cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)
    return run


def _pillow(fmt: str, **options: object) -> Attack:
    def run(rgb: np.ndarray) -> np.ndarray:
        out = io.BytesIO()
        Image.fromarray(rgb).save(out, fmt, **options)
        return np.asarray(Image.open(io.BytesIO(out.getvalue())).convert("RGB"))
    return run


def _resize(f: float) -> Attack:
    return lambda rgb: cv2.resize(rgb, (round(rgb.shape[1] * f), round(rgb.shape[0] * f)), interpolation=cv2.INTER_AREA)


def _crop(rgb: np.ndarray) -> np.ndarray:
    h, w = rgb.shape[:2]
    return rgb[h // 10: h - h // 10, w // 10: w - w // 10].copy()


def _levels(gain: float, contrast: bool) -> Attack:
    def run(rgb: np.ndarray) -> np.ndarray:
        f = rgb.astype(np.float32)
        centre = float(f.mean()) if contrast else 0.0
        return np.clip(np.rint((f - centre) * gain + centre), 0, 255).astype(np.uint8)
    return run


def _screenshot(rgb: np.ndarray) -> np.ndarray:
    """Shown at 125% display scaling, captured as 8-bit RGBA, saved as PNG by Pillow, read by OpenCV."""
    shown = Image.fromarray(rgb).resize((round(rgb.shape[1] * 1.25), round(rgb.shape[0] * 1.25)),
                                        Image.Resampling.BILINEAR).convert("RGBA")
    out = io.BytesIO()
    shown.save(out, "PNG")
    bgra = cv2.imdecode(np.frombuffer(out.getvalue(), np.uint8), cv2.IMREAD_UNCHANGED)
    return cv2.cvtColor(bgra, cv2.COLOR_BGRA2RGB)


ATTACKS: dict[str, Attack] = {
    "PNG round trip": _pillow("PNG"),
    "JPEG q90": _jpeg(90), "JPEG q75": _jpeg(75), "JPEG q50": _jpeg(50),
    "WebP q80": _pillow("WEBP", quality=80),
    "resize 0.5x": _resize(0.5), "resize 0.75x": _resize(0.75),
    "crop 10% per edge": _crop,
    "brightness +20%": _levels(1.2, False), "brightness -20%": _levels(0.8, False),
    "contrast +20%": _levels(1.2, True), "contrast -20%": _levels(0.8, True),
    "screenshot (125%, RGBA PNG)": _screenshot,
    "JPEG q75 + crop + 0.5x": lambda rgb: _jpeg(75)(_resize(0.5)(_crop(rgb))),
}


def tiny_outputs(count: int, size: int = 512) -> list[np.ndarray]:
    """`count` 512x512 images from the tiny random SDXL pipeline (CPU, 2 steps, seeded)."""
    if count <= 0:
        return []
    import torch

    from daemon.models.tiny import tiny_sdxl

    torch.manual_seed(0)
    pipe = tiny_sdxl()
    images = []
    for n in range(count):
        out = pipe(f"benchmark image {n}", num_inference_steps=2, width=size, height=size, output_type="np",
                   generator=torch.Generator().manual_seed(n)).images[0]
        images.append(np.clip(np.rint(out * 255), 0, 255).astype(np.uint8))
    return images


def texture(kind: str, seed: int, h: int, w: int) -> np.ndarray:
    """Unmarked test images beyond bench/outputs.synthetic: periodic, flat, edged and text-like."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:h, 0:w].astype(np.float64)
    if kind == "stripes":
        period, angle = rng.uniform(3, 40), rng.uniform(0, np.pi)
        img = 128 + 100 * np.sin(2 * np.pi * (x * np.cos(angle) + y * np.sin(angle)) / period)
        img = np.repeat(img[..., None], 3, -1) * rng.uniform(0.5, 1.0, 3)
    elif kind == "checker":
        cell = int(rng.integers(2, 64))
        img = np.repeat((((y // cell + x // cell) % 2) * 200 + 20)[..., None], 3, -1)
    elif kind == "flat":
        img = np.broadcast_to(rng.uniform(0, 255, 3), (h, w, 3)) + rng.normal(0, rng.uniform(0, 3), (h, w, 3))
    elif kind == "text":
        img = np.full((h, w, 3), 245, np.uint8)
        for line in range(0, h, 24):
            words = "".join(chr(c) for c in rng.integers(65, 91, 40))
            cv2.putText(img, words, (4, line + 18), cv2.FONT_HERSHEY_SIMPLEX, 0.6, (20, 20, 20), 1, cv2.LINE_AA)
    elif kind == "blocks":  # JPEG-grid-like 8x8 blocks
        img = cv2.resize(rng.uniform(0, 255, (h // 8 + 1, w // 8 + 1, 3)), (w // 8 * 8 + 8, h // 8 * 8 + 8),
                         interpolation=cv2.INTER_NEAREST)[:h, :w]
    else:
        img = cv2.resize(synthetic(kind, seed, max(h, w)), (w, h), interpolation=cv2.INTER_AREA).astype(np.float64)
    return np.clip(np.rint(img), 0, 255).astype(np.uint8)


FP_KINDS = ("photo", "gradient", "noise", "stripes", "checker", "flat", "text", "blocks")
FP_SIZES = ((512, 512), (512, 512), (768, 768), (768, 1024), (1024, 1024), (640, 512), (256, 256), (300, 700))


def unmarked(stop: int, tiny: list[np.ndarray], start: int = 0) -> Iterator[tuple[str, np.ndarray]]:
    for n in range(start, stop):
        if tiny and n % 4 == 0:
            src = tiny[(n // 4) % len(tiny)]
            y, x = np.random.default_rng(7 + n).integers(0, 64, 2)
            variant = src[y:, x:][:, ::-1] if n % 8 else src[y:, x:]
            yield "tiny", np.ascontiguousarray(variant)
        else:
            kind = FP_KINDS[n % len(FP_KINDS)]
            h, w = FP_SIZES[(n // len(FP_KINDS)) % len(FP_SIZES)]
            yield kind, texture(kind, 10_000 + n, h, w)


def coded_bit_accuracy(rgb: np.ndarray, fp: bytes) -> float:
    """Best raw agreement of the 128 coded bits over the detector's own attempts."""
    want = robust.encode_bits(fp) > 0
    luma = robust._luma(rgb.astype(np.float32))
    best = 0.0
    for factor in robust.scale_factors(luma.shape):
        size = (round(luma.shape[1] * factor), round(luma.shape[0] * factor))
        if min(size) < robust.TILE:
            continue
        scaled = luma if factor == 1.0 else cv2.resize(luma, size, interpolation=cv2.INTER_CUBIC)
        folded = robust._fold(robust._highpass(scaled))
        for shifts in robust._candidates(folded):
            for shift, _ in shifts:
                best = max(best, float(np.mean((robust._soft_bits(folded, shift) > 0) == want)))
    return best


def bench_robustness(images: int, tiny: list[np.ndarray]) -> None:
    kinds = ["photo", "gradient", "noise"] + (["tiny"] if tiny else [])
    print(f"\n== 1. robustness at 512x512: {images} images x {', '.join(kinds)}; old = dwtdct, new = robust ==")
    rows: dict[str, list[tuple[float, bool, float, bool]]] = {name: [] for name in ATTACKS}
    n = 0
    for i in range(images):
        for kind in kinds:
            rgb = tiny[i % len(tiny)] if kind == "tiny" else synthetic(kind, 500 + n, 512)
            job = f"bench-{n:05d}"
            fp = watermark.fingerprint(job)
            old, new = watermark.embed_invisible(rgb, fp), robust.embed(rgb, fp)
            n += 1
            for name, attack in ATTACKS.items():
                a_old, a_new = attack(old), attack(new)
                if watermark.can_carry(a_old.shape):
                    reading = watermark.read_invisible(a_old)
                    old_acc, old_hit = reading.accuracy(job), reading.matches(job)
                else:
                    old_acc, old_hit = float("nan"), False
                found = robust.detect(a_new)
                rows[name].append((old_acc, old_hit, coded_bit_accuracy(a_new, fp),
                                   found is not None and found.fingerprint == fp))
    print("| after | old: bit accuracy | old: detected | new: coded-bit accuracy | new: detected |")
    print("|---|---|---|---|---|")
    for name, values in rows.items():
        cols = np.array(values, dtype=np.float64)
        old_acc = np.nanmean(cols[:, 0]) * 100 if not np.isnan(cols[:, 0]).all() else float("nan")
        print(f"| {name} | {old_acc:.0f}% | {cols[:, 1].mean() * 100:.0f}% | "
              f"{cols[:, 2].mean() * 100:.1f}% | {cols[:, 3].mean() * 100:.0f}% |")


def _fp_chunk(job: tuple[int, int, list[np.ndarray]]) -> tuple[int, int, list[str]]:
    """Unmarked images start..stop: (old hits, new hits, what the new mark found)."""
    start, stop, tiny = job
    old_fp, found_list = 0, []
    for n, (kind, rgb) in enumerate(unmarked(stop, tiny, start), start):
        if watermark.can_carry(rgb.shape) and watermark.read_invisible(rgb).present:
            old_fp += 1
        found = robust.detect(rgb)
        if found is not None:
            found_list.append(f"image {n} ({kind}, {rgb.shape[1]}x{rgb.shape[0]}): {found}")
    return old_fp, len(found_list), found_list


def bench_false_positives(count: int, tiny: list[np.ndarray], workers: int) -> None:
    print(f"\n== 2. false positives on {count} unmarked images ({', '.join(FP_KINDS)}"
          f"{', tiny-model variants' if tiny else ''}; sizes 256..1024; {workers} processes) ==", flush=True)
    start = time.perf_counter()
    step = 500
    jobs = [(lo, min(lo + step, count), tiny) for lo in range(0, count, step)]
    old_fp = new_fp = done = 0
    with multiprocessing.get_context("fork").Pool(workers) as pool:
        for old, new, found in pool.imap(_fp_chunk, jobs):
            old_fp, new_fp, done = old_fp + old, new_fp + new, done + step
            for line in found:
                print(f"  new mark false positive: {line}")
            print(f"  {min(done, count)} images: old {old_fp}, new {new_fp} "
                  f"({time.perf_counter() - start:.0f} s)", flush=True)
    attempts = robust.MAX_SCALES * robust.PEAKS * robust.NEIGHBOURHOOD
    print(f"old (dwtdct `present` heuristic): {old_fp} of {count}")
    print(f"new (any Reed-Solomon decode):    {new_fp} of {count}")
    print(f"analytic bound, new: {robust.false_positive_bound(1):.2e} per decode attempt, "
          f"<= {robust.false_positive_bound():.2e} per image (at most {attempts} attempts: {robust.MAX_SCALES} "
          f"scales x {robust.PEAKS} peaks x {robust.NEIGHBOURHOOD} shifts, "
          f"at most {robust.MAX_CORRECTIONS} corrected symbols); "
          f"{time.perf_counter() - start:.0f} s")


def bench_quality(images: int, tiny: list[np.ndarray]) -> None:
    print(f"\n== 3. visual cost at 512x512 against the unmarked image ({images} images per kind) ==")
    print("| image | old PSNR | new PSNR | old SSIM | new SSIM |")
    print("|---|---|---|---|---|")
    for kind in ["photo", "gradient", "noise"] + (["tiny"] if tiny else []):
        vals: list[tuple[float, float, float, float]] = []
        for i in range(images):
            rgb = tiny[i % len(tiny)] if kind == "tiny" else synthetic(kind, 900 + i, 512)
            fp = watermark.fingerprint(f"q{i}")
            old, new = watermark.embed_invisible(rgb, fp), robust.embed(rgb, fp)
            vals.append((cv2.PSNR(old, rgb), cv2.PSNR(new, rgb),
                         structural_similarity(old, rgb, channel_axis=2, data_range=255),
                         structural_similarity(new, rgb, channel_axis=2, data_range=255)))
        m = np.mean(vals, axis=0)
        print(f"| {kind} | {m[0]:.1f} dB | {m[1]:.1f} dB | {m[2]:.4f} | {m[3]:.4f} |")


def bench_time(sizes: list[int], reps: int) -> None:
    print(f"\n== 4. time per image (median of {reps}; photo-like, and noise-like like the tiny models' outputs, "
          "where informed embedding runs all its passes; ms) ==")
    print("| size | image | old mark | new mark | ratio | old read | new detect (marked) | new detect (unmarked) |")
    print("|---|---|---|---|---|---|---|---|")
    for size in sizes:
        for kind in ("photo", "noise"):
            t: dict[str, list[float]] = {k: [] for k in ("om", "nm", "or", "nd", "nu")}
            for rep in range(reps):
                rgb, fp = synthetic(kind, 40 + rep, size), watermark.fingerprint(f"t{rep}")
                old, new = watermark.embed_invisible(rgb, fp), robust.embed(rgb, fp)
                for key, func, arg in (("om", watermark.embed_invisible, rgb), ("nm", robust.embed, rgb),
                                       ("or", watermark.read_invisible, old), ("nd", robust.detect, new),
                                       ("nu", robust.detect, rgb)):
                    start = time.perf_counter()
                    func(arg, fp) if key in ("om", "nm") else func(arg)
                    t[key].append(time.perf_counter() - start)
            med = {k: statistics.median(v) * 1000 for k, v in t.items()}
            print(f"| {size}x{size} | {kind} | {med['om']:.0f} | {med['nm']:.0f} | {med['nm'] / med['om']:.2f}x | "
                  f"{med['or']:.0f} | {med['nd']:.0f} | {med['nu']:.0f} |", flush=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=6, help="marked images per kind in parts 1 and 3")
    parser.add_argument("--fp", type=int, default=300, help="unmarked images in part 2 (10000 for the full run)")
    parser.add_argument("--tiny", type=int, default=4, help="tiny-model outputs to make (0: none)")
    parser.add_argument("--sizes", default="512,1024")
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--workers", type=int, default=1, help="processes for part 2")
    parser.add_argument("--only", choices=("robustness", "fp", "quality", "time"), help="run one part")
    args = parser.parse_args()
    print(f"python {sys.version.split()[0]}, OpenCV {cv2.__version__}, numpy {np.__version__}")
    tiny = tiny_outputs(args.tiny) if args.only in (None, "robustness", "fp", "quality") else []
    if args.only in (None, "robustness"):
        bench_robustness(args.images, tiny)
    if args.only in (None, "fp"):
        bench_false_positives(args.fp, tiny, args.workers)
    if args.only in (None, "quality"):
        bench_quality(args.images, tiny)
    if args.only in (None, "time"):
        bench_time([int(s) for s in args.sizes.split(",")], args.reps)
    return 0


if __name__ == "__main__":
    sys.exit(main())
