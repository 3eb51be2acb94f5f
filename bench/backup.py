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

import uvloop
from submit import daemon_calls

from console.commands.backup import BACKUP_NICENESS
from daemon.client import DaemonClient
from tests.harness import DaemonProcess, run_sai

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


def one_round(daemon: DaemonProcess, root: Path, clients: int) -> dict[str, float]:
    """Every figure of one round, by name (MB, MB/s, submits/s, seconds)."""
    f: dict[str, float] = {}
    seconds, own, size = timed_backup(daemon, root / "backup")
    f["size"], f["backup"], f["own"] = size / 1e6, size / seconds / 1e6, size / own / 1e6
    shutil.rmtree(root / "backup")
    for name, durable in (("cp", False), ("synced", True)):
        seconds, copied = timed_cp(daemon.state_dir, root / "cp", durable)
        f[name] = copied / seconds / 1e6
        shutil.rmtree(root / "cp")
    f["busy"], f["window"] = uvloop.run(submits_while(daemon, clients, root / "during"))
    f["quiet"] = uvloop.run(submits_while(daemon, clients, None, f["window"]))[0]
    f["ratio"] = f["busy"] / f["quiet"]
    return f


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
            rounds = [one_round(daemon, root, args.clients) for _ in range(args.rounds)]
        finally:
            daemon.stop()

    def med(name: str) -> float:
        return statistics.median(r[name] for r in rounds)

    def each(name: str, spec: str = "{:.1f}") -> str:
        return " ".join(spec.format(r[name]) for r in rounds)

    print(f"backup benchmark: state filled with {args.jobs} submits ({fill.rate:.0f}/s), {os.cpu_count()} CPUs, "
          f"{args.rounds} rounds (medians; each round's figure after it)")
    print(f"  state backed up: {med('size'):.1f} MB ({each('size')})")
    print(f"  sai backup (online backup API, SHA-256, synced, signed): {med('backup'):7.1f} MB/s  ({each('backup')})")
    print(f"  the same, as the CLI times its work after start-up:     {med('own'):7.1f} MB/s  ({each('own')})")
    print(f"  cp -a of the same state dir (not consistent):            {med('cp'):7.1f} MB/s  ({each('cp')})")
    print(f"  cp -a, then sync -f (on disk, as a backup is):           {med('synced'):7.1f} MB/s  ({each('synced')})")
    print(f"  ratio sai backup / cp -a: {med('backup') / med('cp'):.2f} end to end, {med('own') / med('cp'):.2f} after "
          f"start-up; sai backup / cp -a + sync: {med('backup') / med('synced'):.2f}")
    print(f"  job.submit, {args.clients} clients: while a backup runs {med('busy'):6.0f}/s ({each('busy', '{:.0f}')}), "
          f"in as long a window right after without one {med('quiet'):6.0f}/s ({each('quiet', '{:.0f}')}); "
          f"windows {each('window')} s")
    print(f"  ratio submits during backup / without, per round: {med('ratio'):.2f} ({each('ratio', '{:.2f}')}) "
          f"(target >= {TARGET_RATIO})")
    print(f"  machine load {os.getloadavg()[0]:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
