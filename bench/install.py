"""Install costs: `make test`'s set-up on a warm machine (nothing changed, then the lock re-applied
to an installed venv), `make bundle`, an offline install from the bundle under `unshare -n`, and
the bundle's and (with --image) the container image's sizes. Times are for scale, measured in one
run on this machine; the set-up's target is seconds, not minutes.

    .venv/bin/python bench/install.py [--image]
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
VENV = Path(sys.prefix)


def timed(argv: list[str], **kwargs: object) -> float:
    started = time.perf_counter()
    done = subprocess.run(argv, capture_output=True, text=True, **kwargs)  # type: ignore[call-overload]
    if done.returncode != 0:
        sys.exit(f"{' '.join(argv)} failed:\n{done.stdout[-2000:]}{done.stderr[-2000:]}")
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--image", action="store_true", help="also build the container image (minutes) and size it")
    args = parser.parse_args()
    make = ["make", "-C", str(ROOT), f"VENV={VENV}", "LOCK=requirements.lock"]
    with tempfile.TemporaryDirectory(prefix="sai-bench-install-") as tmp:
        work = Path(tmp)
        noop = timed([*make, "setup"])
        (VENV / ".installed").unlink()
        reapply = timed([*make, "setup"])
        bundle_s = timed([*make, "bundle", f"DIST={work / 'dist'}"])
        (tarball,) = (work / "dist").glob("*.tar.gz")
        with tarfile.open(tarball) as tar:
            tar.extractall(work / "unpacked", filter="data")
            wheels = sum(1 for m in tar.getmembers() if m.name.endswith(".whl"))
        (top,) = (work / "unpacked").iterdir()
        offline = ["unshare", "-n"] if shutil.which("unshare") and os.geteuid() == 0 else []
        install_s = timed([*offline, str(top / "install.sh"), "--prefix", str(work / "prefix"), "--no-system"])
        venv_mb = sum(f.stat().st_size for f in (work / "prefix").rglob("*") if f.is_file()) / 1e6
        print(f"make setup, nothing changed          {noop:7.2f} s")
        print(f"make setup, lock re-applied (warm)   {reapply:7.2f} s")
        print(f"make bundle                          {bundle_s:7.1f} s   "
              f"{tarball.stat().st_size / 1e6:.0f} MB, {wheels} wheels")
        print(f"install.sh {'under unshare -n' if offline else '(network not cut: needs root)'}      "
              f"{install_s:7.1f} s   {venv_mb:.0f} MB installed")
        if args.image:
            image_s, size = build_image(tarball, work)
            print(f"podman build (runtime, chroot)       {image_s:7.1f} s   {size / 1e6:.0f} MB image")


def build_image(tarball: Path, work: Path) -> tuple[float, int]:
    base = "localhost/debian:bookworm-local"
    if subprocess.run(["podman", "image", "exists", base]).returncode != 0:
        sys.exit(f"no {base}: run tests/deploy/test_container.py once (it makes it with debootstrap)")
    context = work / "context"
    context.mkdir()
    os.link(tarball, context / tarball.name)
    seconds = timed(["podman", "build", "--isolation=chroot", "--format", "docker", "-f", str(ROOT / "Containerfile"),
                     "--build-arg", f"BASE={base}", "--build-arg", f"BUNDLE={tarball.name.removesuffix('.tar.gz')}",
                     "--target", "runtime", "-t", "localhost/secure-ai-studio:bench", str(context)])
    size = subprocess.run(["podman", "image", "inspect", "--format", "{{.Size}}", "localhost/secure-ai-studio:bench"],
                          capture_output=True, text=True, check=True).stdout
    return seconds, int(size)


if __name__ == "__main__":
    main()
