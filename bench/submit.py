"""Submit throughput: 20 concurrent clients submitting to a paused queue through a real daemon,
against a bare SQLite INSERT loop with the same durability (WAL, synchronous=FULL, a commit per
row, because each submit must be durable before its reply). Prints both and their ratio.

The machine these run on is a shared VM whose speed swings by up to 2x within minutes, so the two
are measured in alternation over `--rounds` rounds and compared by their medians. Each round also
times `daemon.status` from the same clients on the same daemon: the request path alone (framing,
JSON, dispatch, reply), which shows how much of a submit's CPU is the submit's own work.

CPU is reported three ways: the daemon's (all threads), its event loop thread's (the part the GIL
serialises) and the clients' (this process, which shares the 2 CPUs with the daemon). Their sum
against what the CPUs can give says whether a target is within reach of the machine at all.
The clients run on uvloop, as the `sai` CLI's do.

    .venv/bin/python bench/submit.py [--clients 20] [--jobs 4000] [--rounds 3]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sqlite3
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import NamedTuple

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import uvloop

from daemon.client import DaemonClient
from tests.harness import DaemonProcess

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


class Calls(NamedTuple):
    """One timed burst of calls; CPU figures are seconds per call."""

    rate: float
    daemon_cpu: float
    loop_thread_cpu: float
    """The daemon's main thread (event loop, request path, submit logic): what the GIL serialises."""
    client_cpu: float
    """This process, i.e. the clients: on a 2-CPU machine they compete with the daemon."""


async def daemon_calls(daemon: DaemonProcess, clients: int, per_client: int,
                       method: str, **params: object) -> Calls:
    """Time `clients` connections each calling `method` `per_client` times in turn."""
    import psutil

    conns = [await DaemonClient.connect(daemon.socket) for _ in range(clients)]
    assert daemon.proc is not None
    proc = psutil.Process(daemon.proc.pid)

    def cpu() -> tuple[float, float, float]:
        main = next(t for t in proc.threads() if t.id == proc.pid)
        return sum(proc.cpu_times()[:2]), main.user_time + main.system_time, time.process_time()

    async def one(client: DaemonClient, k: int) -> None:
        for i in range(per_client):
            await client.call(method, **{key: (f"{value} {k}-{i}" if key == "prompt" else value)
                                         for key, value in params.items()})

    before = cpu()
    started = time.perf_counter()
    await asyncio.gather(*(one(c, k) for k, c in enumerate(conns)))
    elapsed = time.perf_counter() - started
    calls = clients * per_client
    used = [(b - a) / calls for a, b in zip(before, cpu())]
    for c in conns:
        await c.close()
    return Calls(calls / elapsed, *used)


async def one_round(daemon: DaemonProcess, clients: int, per_client: int) -> tuple[Calls, Calls, int]:
    """(the submits, the daemon.status calls, jobs queued afterwards)."""
    submits = await daemon_calls(daemon, clients, per_client, "job.submit", prompt="bench prompt")
    status = await daemon_calls(daemon, clients, per_client, "daemon.status")
    client = await DaemonClient.connect(daemon.socket)
    queued = (await client.call("daemon.status"))["queue"]["queued"]
    await client.close()
    return submits, status, queued


def spread(values: list[float], fmt: str = "{:.0f}") -> str:
    return " ".join(fmt.format(v) for v in values)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=20)
    parser.add_argument("--jobs", type=int, default=4000, help="total submits per round")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    per_client = max(1, args.jobs // args.clients)
    total = per_client * args.clients
    bare, rounds, complete = [], [], True
    for _ in range(args.rounds):
        with tempfile.TemporaryDirectory(prefix="sai-bench-", dir="/tmp") as tmp:
            root = Path(tmp)
            bare.append(bare_inserts(root / "bare.sqlite3", min(total, 2000)))
            daemon = DaemonProcess.create(root, {
                "queue": {"start_paused": True, "burst": 10**9, "rate_per_minute": 1e12,
                          "max_queued_per_user": 10**9},
                "model": {"preload": False}})
            daemon.start()
            try:
                rounds.append(uvloop.run(one_round(daemon, args.clients, per_client)))
            finally:
                daemon.stop()
            complete = complete and rounds[-1][2] == total
    submits, status = [r[0] for r in rounds], [r[1] for r in rounds]
    rates = [c.rate for c in submits]
    rate, bare_rate = statistics.median(rates), statistics.median(bare)
    cpu, loop_cpu, client_cpu = (statistics.median(getattr(c, f) for c in submits)
                                 for f in ("daemon_cpu", "loop_thread_cpu", "client_cpu"))
    status_cpu = statistics.median(c.daemon_cpu for c in status)
    cpus = os.cpu_count() or 1
    print(f"submit benchmark: {args.clients} clients, {total} submits per round, paused queue, "
          f"{cpus} CPUs, {args.rounds} rounds (medians; each round's figure after it)")
    print(f"  bare INSERT + commit per row (WAL, synchronous=FULL): {bare_rate:8.0f} rows/s      ({spread(bare)})")
    print(f"  daemon job.submit, durable before reply (group commit): {rate:6.0f} submits/s   ({spread(rates)})"
          f"{'' if complete else '   SOME SUBMITS NOT QUEUED'}")
    print(f"  ratio daemon / bare inserts: {rate / bare_rate:.2f}")
    print(f"  daemon CPU per submit: {cpu * 1e3:.3f} ms, of which its event loop thread {loop_cpu * 1e3:.3f} ms "
          f"(that thread's ceiling: {1 / loop_cpu:.0f} submits/s)   "
          f"({spread([c.daemon_cpu * 1e3 for c in submits], '{:.3f}')})")
    machine = cpu + client_cpu
    print(f"  whole machine CPU per submit: daemon {cpu * 1e3:.3f} + clients {client_cpu * 1e3:.3f} = "
          f"{machine * 1e3:.3f} ms; {cpus} CPUs busy all the time would allow {cpus / machine:.0f} submits/s, "
          f"the target needs at most {cpus / TARGET * 1e3:.3f} ms")
    print(f"  daemon.status, same clients (the request path alone): {statistics.median(c.rate for c in status):.0f} "
          f"calls/s, {status_cpu * 1e3:.3f} ms CPU per call ({status_cpu / cpu:.2f} of a submit's)")
    print(f"  machine load {os.getloadavg()[0]:.2f}")
    print(f"  target >= {TARGET:.0f} submits/s: {'met' if rate >= TARGET else 'NOT met'}")
    return 0 if complete else 1


if __name__ == "__main__":
    sys.exit(main())
