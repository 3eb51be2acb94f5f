"""The fleet (issue 18): images/s with 1, 2 and 3 boxes on one PostgreSQL queue and their scaling
ratio; claim latency from a submit on one box to the job running on another, idle box; submits/s into
PostgreSQL (a fleet member) beside SQLite (a single box); the time to re-run a killed box's jobs
beside the lease length.

Real `sai daemon` processes on temporary sockets (tests.harness), a private PostgreSQL cluster on a
Unix socket (tests.fleet.pg_helpers, fsync on), the tiny model, one CPU worker per box with
`[model] threads = 1`. Settings other than the daemon's defaults, all printed in the header: the
submit rate and queued caps lifted (the bench queues its jobs at once), `[fleet] lease_seconds` short
and `heartbeat_seconds` below it so a killed box's lease runs out within the bench, and the test
double `tests.pipeline_doubles:SlowPipelineForTests` (a prompt with "slow" in it sleeps 3 s in the
worker) so the killed box is mid-batch. Prints figures and ratios; asserts nothing about time.

    .venv/bin/python bench/fleet.py [--size 64] [--steps 4] [--jobs-per-box 30] [--scale-rounds 3] [--samples 40]
                                    [--submits 300] [--clients 16] [--lease 5] [--heartbeat 1]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import asyncpg

from daemon.client import DaemonClient
from tests.fleet.conftest import member_config
from tests.fleet.pg_helpers import PgCluster
from tests.harness import DaemonProcess, build_tiny, merged

LIFTED = {"burst": 10**6, "rate_per_minute": 1e9, "max_queued_per_user": 10**6}
SLOW = "tests.pipeline_doubles:SlowPipelineForTests"
BOXES = ("box-a", "box-b", "box-c")


def box_config(url: str, name: str, key: str, args: argparse.Namespace) -> dict[str, dict[str, Any]]:
    return merged(member_config(url, name, key, lease_seconds=args.lease, heartbeat_seconds=args.heartbeat),
                  {"queue": dict(LIFTED), "model": {"threads": 1}, "worker": {"devices": ["cpu"],
                                                                              "pipeline_wrapper": SLOW}})


def start_all(daemons: dict[str, DaemonProcess]) -> None:
    for daemon in daemons.values():
        daemon.start(wait=False)
    for daemon in daemons.values():
        daemon.wait_answering(timeout=300)


async def ready(client: DaemonClient) -> None:
    while True:
        workers = (await client.call("daemon.status"))["workers"]
        if workers and all(w["state"] == "ready" for w in workers):
            return
        await asyncio.sleep(0.1)


async def rows(db: asyncpg.Connection, ids: list[str]) -> list[asyncpg.Record]:
    return list(await db.fetch("SELECT job_id, state, box, error, created_at, started_at, finished_at "
                               "FROM jobs WHERE job_id = ANY($1::text[])", ids))


async def until_done(db: asyncpg.Connection, ids: list[str], timeout: float = 900) -> list[asyncpg.Record]:
    """Poll the fleet's table until every job in `ids` succeeded (a failed or cancelled one stops the bench)."""
    deadline = time.monotonic() + timeout
    while True:
        found = await rows(db, ids)
        bad = [row for row in found if row["state"] in ("failed", "cancelled")]
        if bad:
            raise RuntimeError(f"job {bad[0]['job_id']} {bad[0]['state']}: {bad[0]['error']}")
        if len(found) == len(ids) and all(row["state"] == "succeeded" for row in found):
            return found
        if time.monotonic() > deadline:
            raise TimeoutError(f"{len(ids)} jobs not done in {timeout} s")
        await asyncio.sleep(0.02)


async def submit(client: DaemonClient, count: int, args: argparse.Namespace, tag: str) -> list[str]:
    return [(await client.call("job.submit", prompt=f"{tag} {i}", seed=i, width=args.size, height=args.size,
                               steps=args.steps))["job_id"] for i in range(count)]


def cpu_seconds(roots: list[int]) -> float:
    """User + system CPU seconds of the processes `roots` and all their descendants, from /proc."""
    parents: dict[int, int] = {}
    times: dict[int, float] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            parents[int(entry.name)] = int(fields[1])
            times[int(entry.name)] = (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    wanted, frontier = set(roots), list(roots)
    while frontier:
        pid = frontier.pop()
        for child, parent in parents.items():
            if parent == pid and child not in wanted:
                wanted.add(child)
                frontier.append(child)
    return sum(times.get(pid, 0.0) for pid in wanted)


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


async def scaling(clients: dict[str, DaemonClient], db: asyncpg.Connection, roots: list[int],
                  args: argparse.Namespace) -> None:
    """images/s with 1, 2, 3 boxes, and CPU seconds per image of every box's process tree and the
    PostgreSQL server together (the fleet's own cost per image, which sets the scaling once cores
    are free: a ratio near 1 means N boxes need N times the cores of one, no more)."""
    for name, client in clients.items():  # each box's worker loads the model once before timing
        await client.call("queue.resume")
        await until_done(db, await submit(client, 1, args, f"warm-up {name}"))
        await client.call("queue.pause")
    runs: dict[int, list[float]] = {n: [] for n in range(1, len(clients) + 1)}
    cpu: dict[int, list[float]] = {n: [] for n in runs}
    for turn in range(args.scale_rounds):  # 1, 2, 3 boxes then 3, 2, 1: a drift in load hits each alike
        for n in (sorted(runs) if turn % 2 == 0 else sorted(runs, reverse=True)):
            running = list(clients.values())[:n]
            ids = await submit(running[0], args.jobs_per_box * n, args, f"scale {n}")
            started, used = time.time(), cpu_seconds(roots)
            await asyncio.gather(*(client.call("queue.resume") for client in running))
            done = await until_done(db, ids)
            await asyncio.gather(*(client.call("queue.pause") for client in running))
            runs[n].append(len(ids) / (max(row["finished_at"] for row in done) - started))
            cpu[n].append((cpu_seconds(roots) - used) / len(ids))
            ran = [row["box"] for row in done]
            spread = ", ".join(f"{box} {ran.count(box)}" for box in sorted(set(ran)))
            print(f"  {n} box(es): {runs[n][-1]:6.2f} images/s   {len(ids)} images ({spread}), "
                  f"{cpu[n][-1] * 1000:.0f} ms CPU per image, load {os.getloadavg()[0]:.2f}", flush=True)
    rates = {n: statistics.median(values) for n, values in runs.items()}
    per_image = {n: statistics.median(values) for n, values in cpu.items()}
    print("  medians: " + ", ".join(f"{n} box(es) {rate:.2f} images/s" for n, rate in rates.items()), flush=True)
    print("  CPU per image (boxes + PostgreSQL), N boxes / 1 box: " + ", ".join(
        f"{n} boxes {per_image[n] / per_image[1]:.2f}" for n in range(2, len(cpu) + 1)), flush=True)
    cores = os.cpu_count() or 1
    print(f"  all {cores} cores at {per_image[1] * 1000:.0f} ms CPU per image make at most "
          f"{cores / per_image[1]:.1f} images/s, {cores / per_image[1] / rates[1]:.2f}x one box's rate",
          flush=True)
    for n in range(2, len(clients) + 1):
        ceiling = min(n, cores)
        print(f"  scaling {n} boxes / 1 box: {rates[n] / rates[1]:.2f}  (target >= {0.9 * n:.1f} while there are "
              f"cores for them; {cores} cores here: ceiling about {ceiling}.0"
              f"{', the daemons share them' if n > cores else ''}; less where other work holds them)", flush=True)


async def claim_latency(clients: dict[str, DaemonClient], db: asyncpg.Connection, args: argparse.Namespace) -> None:
    """Box-a (paused) takes the submits, box-b (idle, waiting on NOTIFY) claims them: each sample is the
    claim's `started_at` (the database's clock) minus the job's `created_at` (box-a's, same machine)."""
    a, b = clients["box-a"], clients["box-b"]
    await b.call("queue.resume")
    latencies = []
    for i in range(args.samples):
        job_id = (await a.call("job.submit", prompt=f"latency {i}", seed=i, width=args.size, height=args.size,
                               steps=args.steps))["job_id"]
        row = (await until_done(db, [job_id]))[0]
        assert row["box"] == "box-b", row["box"]
        latencies.append((row["started_at"] - row["created_at"]) * 1000)
        await asyncio.sleep(0.05)
    await b.call("queue.pause")
    print(f"  submit on box-a -> running on idle box-b: p50 {pct(latencies, 0.5):.1f} ms, p99 "
          f"{pct(latencies, 0.99):.1f} ms, max {max(latencies):.1f} ms ({len(latencies)} samples; includes "
          f"the submit's own commit)", flush=True)


async def killed_box(daemons: dict[str, DaemonProcess], clients: dict[str, DaemonClient], db: asyncpg.Connection,
                     args: argparse.Namespace) -> None:
    """box-c claims a batch of `slow` jobs; it and its worker are killed with SIGKILL while the batch
    runs; box-b (idle) re-runs them once the lease ran out."""
    c, b = clients["box-c"], clients["box-b"]
    ids = await submit(c, 4, args, "slow kill")
    await c.call("queue.resume")
    while not all(row["state"] == "running" and row["box"] == "box-c" for row in await rows(db, ids)):
        await asyncio.sleep(0.02)
    await asyncio.sleep(0.5)  # inside the 3 s slow call
    killed = time.time()
    daemons["box-c"].kill9(workers=True)
    await b.call("queue.resume")
    done = await until_done(db, ids)
    await b.call("queue.pause")
    assert {row["box"] for row in done} == {"box-b"}, [row["box"] for row in done]
    claimed = min(row["started_at"] for row in done) - killed
    finished = max(row["finished_at"] for row in done) - killed
    print(f"  box-c killed mid-batch (4 jobs, lease {args.lease:g} s, heartbeat {args.heartbeat:g} s): re-claimed "
          f"by box-b {claimed:.2f} s after the kill ({claimed / args.lease:.2f} x lease; expected between "
          f"lease - heartbeat and lease + heartbeat), all 4 succeeded {finished:.2f} s after it "
          f"({finished / args.lease:.2f} x lease; the re-run batch itself sleeps 3 s)", flush=True)


async def submits_per_s(member: DaemonProcess, single: DaemonProcess, args: argparse.Namespace) -> None:
    """The same submits into a paused fleet member (PostgreSQL) and a paused single box (SQLite),
    alternated: one client serially, then `--clients` clients at once."""
    one, lone = await DaemonClient.connect(member.socket), await DaemonClient.connect(single.socket)
    await lone.call("queue.pause")
    fleet_extra = [await DaemonClient.connect(member.socket) for _ in range(args.clients)]
    single_extra = [await DaemonClient.connect(single.socket) for _ in range(args.clients)]

    async def serial(client: DaemonClient) -> float:
        started = time.perf_counter()
        await submit(client, args.submits, args, "serial")
        return args.submits / (time.perf_counter() - started)

    async def concurrent(clients: list[DaemonClient]) -> float:
        each = max(1, args.submits // len(clients))
        started = time.perf_counter()
        await asyncio.gather(*(submit(client, each, args, "concurrent") for client in clients))
        return each * len(clients) / (time.perf_counter() - started)

    figures: dict[str, list[float]] = {"pg 1": [], "sqlite 1": [], "pg n": [], "sqlite n": []}
    for _ in range(args.rounds):
        figures["pg 1"].append(await serial(one))
        figures["sqlite 1"].append(await serial(lone))
        figures["pg n"].append(await concurrent(fleet_extra))
        figures["sqlite n"].append(await concurrent(single_extra))
    med = {key: statistics.median(values) for key, values in figures.items()}
    print(f"  1 client, serial:      PostgreSQL {med['pg 1']:7.0f}/s   SQLite {med['sqlite 1']:7.0f}/s   "
          f"PostgreSQL / SQLite {med['pg 1'] / med['sqlite 1']:.2f}", flush=True)
    print(f"  {args.clients} clients at once:  PostgreSQL {med['pg n']:7.0f}/s   SQLite {med['sqlite n']:7.0f}/s   "
          f"PostgreSQL / SQLite {med['pg n'] / med['sqlite n']:.2f}   (medians of {args.rounds} alternated rounds)",
          flush=True)
    for client in [one, lone, *fleet_extra, *single_extra]:
        await client.close()


async def run(daemons: dict[str, DaemonProcess], single: DaemonProcess, url: str, roots: list[int],
              args: argparse.Namespace) -> None:
    clients = {name: await DaemonClient.connect(daemon.socket) for name, daemon in daemons.items()}
    for client in clients.values():
        await client.call("queue.pause")
        await ready(client)
    db = await asyncpg.connect(url)
    try:
        print("images/s, one queue (jobs submitted while paused, then the boxes resumed together):", flush=True)
        await scaling(clients, db, roots, args)
        print("claim latency:", flush=True)
        await claim_latency(clients, db, args)
        print("a killed box's jobs:", flush=True)
        await killed_box(daemons, clients, db, args)
        print(f"submits/s ({args.submits} jobs of {args.size}² per figure, queues paused):", flush=True)
        await submits_per_s(daemons["box-a"], single, args)
    finally:
        await db.close()
        for name, client in clients.items():
            if name != "box-c":
                await client.close()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--jobs-per-box", type=int, default=30, help="images per box in the scaling figure")
    parser.add_argument("--scale-rounds", type=int, default=3, help="rounds of the 1, 2, 3 boxes figures")
    parser.add_argument("--samples", type=int, default=40, help="claim latency samples")
    parser.add_argument("--submits", type=int, default=300, help="submits per submits/s figure")
    parser.add_argument("--clients", type=int, default=16, help="concurrent clients in the submits/s figure")
    parser.add_argument("--rounds", type=int, default=2, help="alternated rounds of the submits/s figures")
    parser.add_argument("--lease", type=float, default=5.0, help="[fleet] lease_seconds")
    parser.add_argument("--heartbeat", type=float, default=1.0, help="[fleet] heartbeat_seconds")
    args = parser.parse_args()
    from daemon.fleet.prompt_key import generate
    with tempfile.TemporaryDirectory(prefix="sai-bench-", dir="/tmp") as tmp:
        root = Path(tmp)
        model = build_tiny(root / "tiny")
        key = root / "prompt.key"
        generate(key)
        cluster = PgCluster.create()
        daemons: dict[str, DaemonProcess] = {}
        try:
            cluster.start()
            cluster.psql("CREATE DATABASE fleet_bench")
            url = cluster.url("fleet_bench")
            print(f"fleet benchmark: tiny model {args.size}² {args.steps} steps, 1 CPU worker per box with "
                  f"[model] threads = 1, max_batch 4 (default); lease {args.lease:g} s, heartbeat "
                  f"{args.heartbeat:g} s (defaults 30 / 5), submit caps lifted; PostgreSQL on a local socket, "
                  f"fsync on; {os.cpu_count()} CPUs, load {os.getloadavg()[0]:.2f}", flush=True)
            configs: dict[str, dict[str, dict[str, Any]]] = {
                name: box_config(url, name, str(key), args) for name in BOXES}
            configs["single"] = {"queue": dict(LIFTED), "model": {"threads": 1}, "worker": {"devices": ["cpu"]}}
            daemons = {name: DaemonProcess.create(root / name, config, model_dir=model)
                       for name, config in configs.items()}
            start_all(daemons)
            members = {name: daemons[name] for name in BOXES}
            server = int((cluster.data / "postmaster.pid").read_text().split()[0])
            roots = [server, *(daemon.proc.pid for daemon in members.values() if daemon.proc is not None)]
            asyncio.run(run(members, daemons["single"], url, roots, args))
            print(f"load at the end {os.getloadavg()[0]:.2f}", flush=True)
        finally:
            for daemon in daemons.values():
                daemon.stop()
            cluster.destroy()
    return 0


if __name__ == "__main__":
    sys.exit(main())
