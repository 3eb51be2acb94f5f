"""What the audit anchor costs at start-up: opening a big log with and without `Trust`.

    .venv/bin/python bench/audit_anchor.py [--entries 1000000] [--tail 1000]

Prints the time to open the log (writer, key adoption, reader) without the anchor, with the
anchor current (the steady state: entry 0, rotations and the anchored root read back), with
`--tail` entries written after the anchored checkpoint (a crash before the next checkpoint:
those entries are checked in full), and the one-off first start of a state dir from before
anchors (the whole log verified on the fast path, then anchored).
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from audit import ACTOR, ORIGIN, build_big_log
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from daemon.audit.anchor import FILE_NAME, Trust
from daemon.audit.entry import key_id
from daemon.audit.log import AuditLog


def trust_for(directory: Path, key: Ed25519PrivateKey) -> Trust:
    raw = key.public_key().public_bytes_raw()
    return Trust(directory / FILE_NAME, lambda: {key_id(raw): raw})


async def timed_open(path: Path, key: Ed25519PrivateKey, trust: Trust | None, every: int = 1000) -> float:
    t0 = time.perf_counter()
    log = await AuditLog.open(path, key, ORIGIN, trust=trust, checkpoint_every_entries=every)
    took = time.perf_counter() - t0
    await log.close()
    return took


async def append_tail(path: Path, key: Ed25519PrivateKey, count: int) -> None:
    log = await AuditLog.open(path, key, ORIGIN, checkpoint_every_entries=count + 1)
    await asyncio.gather(*(log.append(ACTOR, "job.start", f"job-{i}", {"n": i}) for i in range(count)))
    await log.close()


async def run(directory: Path, key: Ed25519PrivateKey, tail: int) -> None:
    path = directory / "audit.db"
    plain = min([await timed_open(path, key, None) for _ in range(3)])
    upgrade = await timed_open(path, key, trust_for(directory, key))
    anchored = min([await timed_open(path, key, trust_for(directory, key)) for _ in range(3)])
    kept = (directory / FILE_NAME).read_bytes()
    await append_tail(path, key, tail)
    (directory / FILE_NAME).write_bytes(kept)  # as after a kill -9 before the next checkpoint
    with_tail = await timed_open(path, key, trust_for(directory, key))
    print(f"open without anchor (best of 3)        {plain * 1000:9.1f} ms")
    print(f"open, anchor current (best of 3)       {anchored * 1000:9.1f} ms   (+{(anchored - plain) * 1000:.1f} ms)")
    print(f"open, {tail} entries after the anchor    {with_tail * 1000:9.1f} ms   "
          f"(+{(with_tail - plain) * 1000:.1f} ms)")
    print(f"first open of a pre-anchor state dir   {upgrade * 1000:9.1f} ms   (whole log verified, once)")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--entries", type=int, default=1_000_000)
    parser.add_argument("--tail", type=int, default=1000)
    args = parser.parse_args()
    directory = Path(tempfile.mkdtemp(prefix="sai-anchor-bench-"))
    key = Ed25519PrivateKey.generate()
    try:
        t0 = time.perf_counter()
        with ProcessPoolExecutor(2) as pool:
            build_big_log(directory / "audit.db", key, args.entries, pool)
        print(f"built {args.entries:,} entries in {time.perf_counter() - t0:.0f} s", flush=True)
        asyncio.run(run(directory, key, args.tail))
    finally:
        shutil.rmtree(directory, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
