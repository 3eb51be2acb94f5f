"""Backup cost: `sai backup` throughput beside a plain `cp -a` of the same state directory, and
submit throughput while backups run beside the same window without one. Prints ratios.

A real daemon (sealed keys, paused queue) is filled with `--jobs` submits first, so the jobs and
audit databases have some size. Then, over `--rounds` rounds and in alternation (the shared VM's
speed swings within minutes; medians compare like with like):

- `sai backup DIR` as the CLI runs it (online backup API, hashes, fsyncs, the daemon's signature),
  and `cp -a` of the state directory (not a consistent copy of a live WAL database), as it returns
  (in the page cache) and followed by `sync -f` (on disk, as the backup is);
- `--clients` connections submitting while one `sai backup` runs (start to exit), then for as
  long again with none. The target is a ratio of at least 0.8.

`--outputs-mb` adds output-sized files of random bytes (real states are mostly outputs), so a
backup lasts long enough to be a measuring window.

    .venv/bin/python bench/backup.py [--jobs 20000] [--outputs-mb 200] [--rounds 3] [--clients 8]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.append(str(Path(__file__).resolve().parent))  # for submit.py, after the packages

import uvloop  # noqa: E402

from console.commands.backup import BACKUP_NICENESS  # noqa: E402
from daemon.client import DaemonClient  # noqa: E402
from daemon.harness import DaemonProcess, run_sai  # noqa: E402
from submit import daemon_calls  # noqa: E402

TARGET_RATIO = 0.8
PASSPHRASE = {"SAI_PASSPHRASE": "bench passphrase"}


def tree_bytes(root: Path) -> int:
    return sum(p.lstat().st_size for p in root.rglob("*") if p.is_file() and not p.is_symlink())


def timed_backup(daemon: DaemonProcess, target: Path) -> tuple[float, float, int]:
    """(seconds of the whole `sai backup` process, seconds it reports for its own work after
    start-up, bytes in the backup)."""
    started = time.perf_counter()
    done = run_sai("backup", str(target), "--json", socket_path=daemon.socket)
    elapsed = time.perf_counter() - started
    if done.returncode != 0:
        raise RuntimeError(f"sai backup failed: {done.stderr}")
    report = json.loads(done.stdout)
    return elapsed, report["seconds"], report["bytes"]


def timed_cp(state: Path, target: Path, durable: bool) -> tuple[float, int]:
    """`cp -a` at the niceness `sai backup` takes, then when `durable` `sync -f` on the copy (on
    disk, as a backup is)."""
    subprocess.run(["sync", "-f", str(state.parent)], check=True)
    started = time.perf_counter()
    subprocess.run(["nice", "-n", str(BACKUP_NICENESS), "cp", "-a", str(state), str(target)], check=True)
    if durable:
        subprocess.run(["sync", "-f", str(target)], check=True)
    return time.perf_counter() - started, tree_bytes(target)


async def submits_while(daemon: DaemonProcess, clients: int, backup_to: Path | None,
                        seconds: float = 0.0) -> tuple[float, float]:
    """(submits per second, window in seconds): the window is one `sai backup` into `backup_to`
    from start to exit, or `seconds` with no backup."""
    conns = [await DaemonClient.connect(daemon.socket) for _ in range(clients)]
    done = asyncio.Event()
    count = 0

    async def one(client: DaemonClient, k: int) -> None:
        nonlocal count
        i = 0
        while not done.is_set():
            await client.call("job.submit", prompt=f"bench window {k}-{i}")
            count += 1
            i += 1

    async def window() -> None:
        if backup_to is None:
            await asyncio.sleep(seconds)
        else:
            await asyncio.to_thread(timed_backup, daemon, backup_to)
        done.set()

    started = time.perf_counter()
    await asyncio.gather(window(), *(one(c, k) for k, c in enumerate(conns)))
    elapsed = time.perf_counter() - started
    for c in conns:
        await c.close()
    if backup_to is not None:
        shutil.rmtree(backup_to)
    return count / elapsed, elapsed


def pad_outputs(outputs: Path, megabytes: int) -> None:
    """Encrypted-output-sized files of random bytes: what dominates a real state directory."""
    for i in range(megabytes):
        (outputs / f"jbench{i:07x}-0.png.sai").write_bytes(os.urandom(1 << 20))


def fmt(values: list[float], spec: str = "{:.1f}") -> str:
    return " ".join(spec.format(v) for v in values)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=20000, help="submits that fill the state first")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--outputs-mb", type=int, default=200, help="MB of output-sized files added to the state")
    parser.add_argument("--clients", type=int, default=8)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="sai-bench-", dir="/tmp") as tmp:
        root = Path(tmp)
        daemon = DaemonProcess.create(root, {
            "queue": {"start_paused": True, "burst": 10**9, "rate_per_minute": 1e12, "max_queued_per_user": 10**9},
            "model": {"preload": False}, "keys": {"sealed": True}})
        daemon.start(env=PASSPHRASE)
        try:
            fill = uvloop.run(daemon_calls(daemon, 20, max(1, args.jobs // 20), "job.submit", prompt="bench fill"))
            pad_outputs(daemon.state_dir / "outputs", args.outputs_mb)
            backup_rates, copy_rates, cp_rates, synced_rates, sizes, quiet, busy, windows = [], [], [], [], [], [], [], []
            for r in range(args.rounds):
                seconds, own, size = timed_backup(daemon, root / f"backup-{r}")
                backup_rates.append(size / seconds / 1e6)
                copy_rates.append(size / own / 1e6)
                sizes.append(size / 1e6)
                seconds, copied = timed_cp(daemon.state_dir, root / f"cp-{r}", durable=False)
                cp_rates.append(copied / seconds / 1e6)
                shutil.rmtree(root / f"cp-{r}")
                seconds, copied = timed_cp(daemon.state_dir, root / f"cp-{r}", durable=True)
                synced_rates.append(copied / seconds / 1e6)
                shutil.rmtree(root / f"backup-{r}")
                shutil.rmtree(root / f"cp-{r}")
                rate, seconds = uvloop.run(submits_while(daemon, args.clients, root / "during"))
                busy.append(rate)
                windows.append(seconds)
                quiet.append(uvloop.run(submits_while(daemon, args.clients, None, seconds))[0])
        finally:
            daemon.stop()
    b, c = statistics.median(backup_rates), statistics.median(cp_rates)
    d = statistics.median(synced_rates)
    q, w = statistics.median(quiet), statistics.median(busy)
    ratios = [x / y for x, y in zip(busy, quiet)]
    print(f"backup benchmark: state filled with {args.jobs} submits ({fill.rate:.0f}/s), {os.cpu_count()} CPUs, "
          f"{args.rounds} rounds (medians; each round's figure after it)")
    print(f"  state backed up: {statistics.median(sizes):.1f} MB ({fmt(sizes)})")
    print(f"  sai backup (online backup API, SHA-256, synced, signed):{b:7.1f} MB/s  ({fmt(backup_rates)})")
    print(f"  the same, as the CLI times its work after start-up:   {statistics.median(copy_rates):7.1f} MB/s  "
          f"({fmt(copy_rates)})")
    print(f"  cp -a of the same state dir (not consistent):            {c:7.1f} MB/s  ({fmt(cp_rates)})")
    print(f"  cp -a, then sync -f (on disk, as a backup is):           {d:7.1f} MB/s  ({fmt(synced_rates)})")
    print(f"  ratio sai backup / cp -a: {b / c:.2f} end to end, {statistics.median(copy_rates) / c:.2f} after start-up; "
          f"sai backup / cp -a + sync: {b / d:.2f}")
    print(f"  job.submit, {args.clients} clients: while a backup runs {w:6.0f}/s ({fmt(busy, '{:.0f}')}), "
          f"in as long a window right after without one {q:6.0f}/s ({fmt(quiet, '{:.0f}')}); windows "
          f"{fmt(windows)} s")
    print(f"  ratio submits during backup / without, per round: {statistics.median(ratios):.2f} ({fmt(ratios, '{:.2f}')}); "
          f"of the medians: {w / q:.2f} (target >= {TARGET_RATIO})")
    print(f"  machine load {os.getloadavg()[0]:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
