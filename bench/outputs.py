"""Benchmark of the output path. Prints numbers and ratios measured side by side in one run; it
never passes or fails on absolute time.

    .venv/bin/python bench/outputs.py [--reps N] [--sizes 512,1024] [--jobs N] [--dir DIR]

1. Cost per image of protect_image (visible mark, invisible mark, PNG encode, hash, encrypt,
   atomic write, sign, manifest write) split by step, at each size, with ratios to a bare PNG
   encode (Pillow's default save, what an unprotected service would do) and to the invisible
   mark's own cost (target: whole path < 1.3x the mark).
2. Robustness of the first invisible mark (dwtdct, sai-mark/1): bit accuracy and detection rate
   (>= 56/64 bits) after a PNG round trip, JPEG quality 90 and 75, resize to 0.75x, and a 10%
   crop. bench/provenance.py compares it with the robust mark the output path now uses.
"""

from __future__ import annotations

import argparse
import io
import os
import statistics
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

import cv2
import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from daemon.crypto.keys import KeyStore
from daemon.outputs import watermark
from daemon.outputs.pipeline import OutputInfo, OutputSettings, protect_image
from daemon.outputs.png import encode_png, read_png

STEPS = ("visible", "invisible", "png", "hash", "encrypt", "write_image", "manifest", "write_manifest")


def synthetic(kind: str, seed: int, size: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    if kind == "noise":  # what the tiny test model produces
        return rng.integers(0, 256, (size, size, 3), dtype=np.uint8)
    if kind == "gradient":
        y, x = np.mgrid[0:size, 0:size] / size
        img = np.stack([255 * x, 255 * y, 160 * (1 - x) * y + 40], -1) + rng.normal(0, 3, (size, size, 3))
    else:  # "photo-like": smooth blobs with fine grain
        coarse = rng.normal(128, 50, (max(size // 16, 2), max(size // 16, 2), 3))
        img = cv2.resize(coarse, (size, size), interpolation=cv2.INTER_CUBIC) + rng.normal(0, 4, (size, size, 3))
    return np.clip(np.rint(img), 0, 255).astype(np.uint8)


def pillow_png(rgb: np.ndarray) -> bytes:
    out = io.BytesIO()
    Image.fromarray(rgb).save(out, format="PNG")
    return out.getvalue()


def ms(seconds: float) -> str:
    return f"{seconds * 1000:8.1f}"


def bench_path(sizes: list[int], reps: int, work: Path) -> None:
    keystore = KeyStore.open(work / "keys")
    settings = OutputSettings.defaults()
    kinds = ("photo", "noise")
    print("== 1. cost per image of the whole output path (median of", reps, "runs per image kind; ms) ==")
    for size in sizes:
        out_dir = work / f"out-{size}"
        out_dir.mkdir()
        steps: dict[str, list[float]] = {s: [] for s in STEPS}
        totals: list[float] = []
        bare: list[float] = []
        ratio_mark: list[float] = []
        warm = synthetic("photo", 0, size)
        protect_image(warm, OutputInfo("warmup", 0, "bench", {}, "p"), keystore, settings, out_dir)
        pillow_png(warm)
        n = 0
        for kind in kinds:
            for rep in range(reps):
                rgb = synthetic(kind, rep, size)
                t0 = time.perf_counter()
                pillow_png(rgb)
                bare_t = time.perf_counter() - t0
                info = OutputInfo(f"bench-{size}-{n}", 0, "bench", {"width": size, "height": size},
                                  "a benchmark prompt", seed=rep, model_id="synthetic",
                                  created=datetime.now(UTC))
                t0 = time.perf_counter()
                result = protect_image(rgb, info, keystore, settings, out_dir)
                total = time.perf_counter() - t0
                n += 1
                bare.append(bare_t)
                totals.append(total)
                ratio_mark.append(total / result.timings["invisible"])
                for step in STEPS:
                    steps[step].append(result.timings[step])
        med = {s: statistics.median(v) for s, v in steps.items()}
        total = statistics.median(totals)
        print(f"\n{size}x{size}  ({len(totals)} images: {', '.join(kinds)})")
        for step in STEPS:
            print(f"  {step:<15}{ms(med[step])}  {med[step] / total * 100:5.1f}%")
        print(f"  {'whole path':<15}{ms(total)}")
        print(f"  {'bare PNG':<15}{ms(statistics.median(bare))}   (Pillow Image.save PNG, default settings)")
        print(f"  ratio whole path / bare PNG encode      {total / statistics.median(bare):6.2f}x")
        print(f"  ratio whole path / invisible mark       {statistics.median(ratio_mark):6.2f}x"
              f"   (per image, median; target < 1.3x)")
        print(f"  ratio PNG step / bare PNG encode        {med['png'] / statistics.median(bare):6.2f}x")


def attacks(rgb: np.ndarray) -> dict[str, np.ndarray]:
    h, w = rgb.shape[:2]
    bgr = cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR)

    def jpeg(q: int) -> np.ndarray:
        data = cv2.imencode(".jpg", bgr, [cv2.IMWRITE_JPEG_QUALITY, q])[1]
        return cv2.cvtColor(cv2.imdecode(data, cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)

    small = cv2.resize(rgb, (int(w * 0.75), int(h * 0.75)), interpolation=cv2.INTER_AREA)
    dy, dx = int(h * 0.05), int(w * 0.05)
    return {
        "PNG round trip": read_png(encode_png(rgb))[0],
        "JPEG q90": jpeg(90),
        "JPEG q75": jpeg(75),
        "resize 0.75x": small,
        "resize 0.75x, back to 1x": cv2.resize(small, (w, h), interpolation=cv2.INTER_CUBIC),
        "crop 10% (5% each edge)": rgb[dy:h - dy, dx:w - dx].copy(),
    }


def bench_robustness(size: int, jobs: int) -> None:
    print(f"\n== 2. invisible-mark robustness at {size}x{size} ({jobs} job ids x photo/gradient/noise images) ==")
    results: dict[str, list[tuple[float, bool]]] = {}
    start = time.perf_counter()
    for n in range(jobs):
        job = f"j{n:04d}-{(n * 7919) % 10007}"
        for k, kind in enumerate(("photo", "gradient", "noise")):
            marked = watermark.embed_invisible(synthetic(kind, 1000 + 3 * n + k, size), watermark.fingerprint(job))
            for name, attacked in attacks(marked).items():
                if not watermark.can_carry(attacked.shape):
                    results.setdefault(name, []).append((float("nan"), False))
                    continue
                reading = watermark.read_invisible(attacked)
                results.setdefault(name, []).append((reading.accuracy(job), reading.matches(job)))
    print(f"{'condition':<28}{'bit accuracy':>14}{'min':>8}{'detected':>10}")
    for name, values in results.items():
        acc = [a for a, _ in values]
        det = sum(d for _, d in values) / len(values)
        print(f"{name:<28}{np.mean(acc) * 100:13.1f}%{np.min(acc) * 100:7.1f}%{det * 100:9.1f}%")
    print(f"(detected = at least {int(watermark.MATCH_ACCURACY * 64)} of 64 bits match the job's fingerprint; "
          f"chance level is 50% bit accuracy; {time.perf_counter() - start:.1f} s)")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--reps", type=int, default=3, help="images per kind and size")
    parser.add_argument("--sizes", default="512,1024")
    parser.add_argument("--jobs", type=int, default=8, help="job ids in the robustness table")
    parser.add_argument("--dir", help="work directory (default: a temp dir on the same disk as the repo)")
    args = parser.parse_args()
    base = Path(args.dir) if args.dir else Path(__file__).resolve().parents[1]
    print(f"python {sys.version.split()[0]}, OpenCV {cv2.__version__}, numpy {np.__version__}, "
          f"{os.cpu_count()} CPUs, load {os.getloadavg()[0]:.2f}")
    with tempfile.TemporaryDirectory(prefix=".bench-outputs-", dir=base) as tmp:
        bench_path([int(s) for s in args.sizes.split(",")], args.reps, Path(tmp))
    bench_robustness(512, args.jobs)
    return 0


if __name__ == "__main__":
    sys.exit(main())
