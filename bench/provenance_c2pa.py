"""Cost of C2PA Content Credentials on the output path. Prints numbers and ratios measured side by
side in one run; it never passes or fails on absolute time.

    .venv/bin/python bench/provenance_c2pa.py [--reps N] [--sizes 512,1024]

Per size: the time to embed and sign the manifest (daemon.outputs.credentials.embed_credentials),
the time to read and validate it with c2pa's Reader (offline, our CA as anchor), the bytes it
adds, and the whole `protect_image` path with and without it at the shipped settings (robust
mark, visible mark, PNG level 1; runs interleaved, the order swapped every repetition since the
first of a pair runs slower; ratio = the median over repetitions of with / without in the same
repetition, which a load change between repetitions does not skew; target <= 1.05). Under load
that ratio moves by several percent from run to run, so the C2PA step's own time inside the path
(`timings["c2pa"]` of the same runs) is printed too, with 1 + step / path without C2PA. Then `sai identify`'s work
(`daemon.outputs.identify.examine`, what `output.identify` runs in the daemon's thread pool:
decode, C2PA reading, mark search) on an exported credentialed PNG and on a JPEG q75 re-encode
of it. `measure(sizes, reps)` returns the same as a dict.
"""

from __future__ import annotations

import argparse
import io
import statistics
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from daemon.crypto.keys import KeyStore
from daemon.outputs.credentials import Provenance, embed_credentials, read_credentials
from daemon.outputs.identify import examine
from daemon.outputs.pipeline import OutputInfo, OutputSettings, export_output, protect_image
from daemon.outputs.png import encode_png, metadata_text


def _image(size: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    coarse = rng.normal(128, 50, (size // 16, size // 16, 3)).repeat(16, 0).repeat(16, 1)
    return np.clip(coarse + rng.normal(0, 4, coarse.shape), 0, 255).astype(np.uint8)


def _info(job: str, size: int) -> OutputInfo:
    return OutputInfo(job_id=job, index=0, user="bench", params={"width": size, "height": size},
                      prompt="a lighthouse at dusk", model_id="tiny", weights_sha256="ab" * 32,
                      created=datetime.now(UTC))


def _ms(values: list[float]) -> float:
    return round(statistics.median(values) * 1000, 2)


def measure(sizes: list[int], reps: int) -> dict[str, Any]:
    results: dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as tmp:
        keystore = KeyStore.open(Path(tmp) / "keys")
        anchors = keystore.c2pa.ca_pem().decode()
        with_c2pa, without = OutputSettings.defaults(c2pa=True), OutputSettings.defaults(c2pa=False)
        for size in sizes:
            rgb = _image(size, size)
            png = encode_png(rgb, metadata_text({"job_id": "bench"}), 1)
            what = Provenance("bench", 0, "tiny", "ab" * 32)
            embed_credentials(png, what, keystore)  # warm: the first call loads c2pa
            signs, reads, signed = [], [], b""
            for _ in range(reps):
                start = time.perf_counter()
                signed = embed_credentials(png, what, keystore)
                middle = time.perf_counter()
                report = read_credentials(signed, anchors)
                reads.append(time.perf_counter() - middle)
                signs.append(middle - start)
                assert report.state == "Trusted", report
            on, off, steps = [], [], []
            out_dir = Path(tmp) / f"out{size}"
            out_dir.mkdir()
            for rep in range(reps):  # interleaved, so load on the machine hits both alike
                pair = ((with_c2pa, on), (without, off))
                for settings, times in pair if rep % 2 else pair[::-1]:
                    job = f"b{size}-{rep}-{int(settings.c2pa)}"
                    start = time.perf_counter()
                    done = protect_image(rgb, _info(job, size), keystore, settings, out_dir)
                    times.append(time.perf_counter() - start)
                    if settings.c2pa:
                        steps.append(done.timings["c2pa"])
            exported = export_output(out_dir, f"b{size}-0-1", 0, keystore)
            jpeg = io.BytesIO()
            Image.open(io.BytesIO(exported)).convert("RGB").save(jpeg, "JPEG", quality=75)
            identify = {}
            for name, data in (("png", exported), ("jpeg75", jpeg.getvalue())):
                times, found = [], None
                for _ in range(reps):
                    start = time.perf_counter()
                    found, _legacy = examine(data, anchors)
                    times.append(time.perf_counter() - start)
                assert found is not None
                identify[name] = {"ms": _ms(times), "c2pa": found.c2pa.get("state"), "mark": found.mark["found"]}
            results[f"{size}x{size}"] = {
                "sign_ms": _ms(signs), "read_ms": _ms(reads), "bytes_added": len(signed) - len(png),
                "png_bytes": len(png), "path_with_ms": _ms(on), "path_without_ms": _ms(off),
                "ratio": round(statistics.median(a / b for a, b in zip(on, off, strict=True)), 3),
                "step_ms": _ms(steps), "step_ratio": round(1 + statistics.median(steps) / statistics.median(off), 3),
                "identify": identify}
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=int, default=21)
    parser.add_argument("--sizes", default="512,1024")
    args = parser.parse_args()
    results = measure([int(s) for s in args.sizes.split(",")], args.reps)
    print(f"{'size':>10} {'sign ms':>8} {'read ms':>8} {'+bytes':>7} {'path ms':>8} {'no c2pa':>8} {'ratio':>6}"
          f" {'step ms':>8} {'1+step':>7} {'identify PNG ms':>16} {'identify JPEG q75 ms':>21}")
    for size, row in results.items():
        ident = {name: f"{r['ms']:.1f} ({r['c2pa'] or 'no C2PA'}, {'mark' if r['mark'] else 'no mark'})"
                 for name, r in row["identify"].items()}
        print(f"{size:>10} {row['sign_ms']:8.2f} {row['read_ms']:8.2f} {row['bytes_added']:7d} "
              f"{row['path_with_ms']:8.2f} {row['path_without_ms']:8.2f} {row['ratio']:6.3f}"
              f" {row['step_ms']:8.2f} {row['step_ratio']:7.3f} {ident['png']:>16} {ident['jpeg75']:>21}")

if __name__ == "__main__":
    main()
