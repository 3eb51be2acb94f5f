"""Submit throughput: 20 concurrent clients submitting to a paused queue through a real daemon,
against a bare SQLite INSERT loop with the same durability (WAL, synchronous=FULL, a commit per
row, because each submit must be durable before its reply). Prints both and their ratio.

    .venv/bin/python bench/submit.py [--clients 20] [--jobs 4000]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sqlite3
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from daemon.client import DaemonClient  # noqa: E402
from daemon.harness import DaemonProcess  # noqa: E402

TARGET = 3000.0


def bare_inserts(path: Path, n: int) -> float:
    """Rows per second, one committed INSERT per row, same pragmas and row size as the job store."""
    db = sqlite3.connect(path)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("PRAGMA synchronous=FULL")
    db.execute("CREATE TABLE jobs (seq INTEGER PRIMARY KEY, job_id TEXT UNIQUE, state TEXT, priority INTEGER, "
               "params TEXT, prompt BLOB, negative_prompt BLOB, user TEXT, uid INTEGER, created_at REAL)")
    params = '{"width": 64, "height": 64, "steps": 4, "guidance": 7.5, "seed": 1, "count": 1}'
    started = time.perf_counter()
    for i in range(n):
        db.execute("INSERT INTO jobs VALUES (?, ?, 'queued', 1, ?, ?, x'', 'bench', 0, ?)",
                   (i + 1, f"j{i:012x}", params, f"bench prompt {i}".encode(), time.time()))
        db.commit()
    elapsed = time.perf_counter() - started
    db.close()
    return n / elapsed


async def daemon_submits(daemon: DaemonProcess, clients: int, per_client: int) -> tuple[float, int, float]:
    """(submits/s, jobs queued afterwards, daemon CPU seconds spent)."""
    import psutil

    conns = [await DaemonClient.connect(daemon.socket) for _ in range(clients)]
    assert daemon.proc is not None
    proc = psutil.Process(daemon.proc.pid)
    cpu_before = sum(proc.cpu_times()[:2])

    async def one(client: DaemonClient, k: int) -> None:
        for i in range(per_client):
            await client.call("job.submit", prompt=f"bench prompt {k}-{i}")

    started = time.perf_counter()
    await asyncio.gather(*(one(c, k) for k, c in enumerate(conns)))
    elapsed = time.perf_counter() - started
    cpu = sum(proc.cpu_times()[:2]) - cpu_before
    status = await conns[0].call("daemon.status")
    for c in conns:
        await c.close()
    return clients * per_client / elapsed, status["queue"]["queued"], cpu


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=20)
    parser.add_argument("--jobs", type=int, default=4000, help="total submits")
    args = parser.parse_args()
    per_client = max(1, args.jobs // args.clients)
    total = per_client * args.clients
    with tempfile.TemporaryDirectory(prefix="sai-bench-", dir="/tmp") as tmp:
        root = Path(tmp)
        bare = bare_inserts(root / "bare.sqlite3", min(total, 2000))
        daemon = DaemonProcess.create(root, {
            "queue": {"start_paused": True, "burst": 10**9, "rate_per_minute": 1e12,
                      "max_queued_per_user": 10**9},
            "model": {"preload": False}})
        daemon.start()
        try:
            rate, queued, cpu = asyncio.run(daemon_submits(daemon, args.clients, per_client))
        finally:
            daemon.stop()
    print(f"submit benchmark: {args.clients} clients, {total} submits, paused queue, {os.cpu_count()} CPUs")
    print(f"  bare INSERT + commit per row (WAL, synchronous=FULL): {bare:10.0f} rows/s")
    print(f"  daemon job.submit, durable before reply (group commit): {rate:10.0f} submits/s"
          f"   ({queued} jobs queued afterwards)")
    print(f"  ratio daemon / bare inserts: {rate / bare:.2f}")
    per_submit = cpu / total
    print(f"  daemon CPU per submit: {per_submit * 1e3:.3f} ms (one core's ceiling: {1 / per_submit:.0f} submits/s)"
          f"; machine load {os.getloadavg()[0]:.2f}")
    print(f"  target >= {TARGET:.0f} submits/s: {'met' if rate >= TARGET else 'NOT met'}")
    return 0 if queued == total else 1


if __name__ == "__main__":
    sys.exit(main())
