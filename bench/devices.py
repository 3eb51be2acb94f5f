"""Workers per device on a CPU box: two CPU workers × 1 torch thread against one worker × 2 threads
on the same queue of jobs (images/s, and their ratio), and what a worker crash costs (images whose
generation was lost to the restart, and seconds from the kill until that worker serves again).

Real daemons on temporary sockets, the tiny model, the daemon's defaults otherwise (only the
submit rate limit is lifted so the bench can queue its jobs at once). Prints ratios and figures;
asserts nothing about time.

    .venv/bin/python bench/devices.py [--size 128] [--steps 8] [--jobs 16] [--rounds 2]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from daemon.client import DaemonClient
from tests.harness import DaemonProcess, build_tiny

LIFTED = {"burst": 10**6, "rate_per_minute": 1e9}
SHAPES: dict[str, dict[str, dict[str, Any]]] = {
    "2 workers x 1 thread": {"worker": {"devices": ["cpu", "cpu"]}, "model": {"threads": 2}},
    "1 worker x 2 threads": {"model": {"threads": 2}},
}


async def ready(client: DaemonClient, count: int) -> list[dict[str, Any]]:
    while True:
        workers = (await client.call("daemon.status"))["workers"]
        if len(workers) == count and all(w["state"] == "ready" for w in workers):
            return workers
        await asyncio.sleep(0.1)


async def finish(client: DaemonClient, ids: set[str]) -> dict[str, float]:
    """Wait (on job events) until every job in `ids` succeeded; return when each did."""
    done: dict[str, float] = {}
    while len(done) < len(ids):
        event = await client.next_event(timeout=900)
        data = event["data"] if event else {}
        if data.get("kind") == "state" and data.get("job_id") in ids:
            if data["state"] in ("failed", "cancelled"):
                raise RuntimeError(f"{data['job_id']} {data['state']}")
            if data["state"] == "succeeded":
                done[data["job_id"]] = time.perf_counter()
    return done


async def submit(client: DaemonClient, jobs: int, size: int, steps: int, tag: str) -> set[str]:
    return {(await client.call("job.submit", prompt=f"{tag} {i}", seed=i, width=size, height=size,
                               steps=steps))["job_id"] for i in range(jobs)}


async def throughput(daemon: DaemonProcess, workers: int, size: int, steps: int, jobs: int) -> float:
    client = await DaemonClient.connect(daemon.socket)
    await ready(client, workers)
    await client.call("events.subscribe", topics=["job"])
    await finish(client, await submit(client, workers, size, steps, "warm-up"))
    await client.call("queue.pause")
    ids = await submit(client, jobs, size, steps, "bench")
    started = time.perf_counter()
    await client.call("queue.resume")
    await finish(client, ids)
    elapsed = time.perf_counter() - started
    await client.close()
    return jobs / elapsed


async def crash_cost(daemon: DaemonProcess, size: int, steps: int, jobs: int) -> dict[str, float]:
    """SIGKILL the one worker in the middle of a queue of jobs: images lost (jobs whose attempt was
    killed and ran again), seconds from the kill until the worker is ready again, and until the
    killed batch's images are done again."""
    client = await DaemonClient.connect(daemon.socket)
    await ready(client, 1)
    await client.call("events.subscribe", topics=["job"])
    ids = await submit(client, jobs, size, steps, "crash")
    while True:  # a step of a job after the first few: the worker is mid-batch
        event = await client.next_event(timeout=900)
        data = event["data"] if event else {}
        if data.get("kind") == "state" and data.get("state") == "succeeded":
            break
    pid = (await client.call("daemon.status"))["workers"][0]["pid"]
    while True:
        event = await client.next_event(timeout=900)
        if event and event["data"].get("kind") == "progress":
            break
    killed = time.perf_counter()
    os.kill(pid, signal.SIGKILL)
    succeeded = {job_id for job_id in ids if (await client.call("job.get", job_id=job_id))["state"] == "succeeded"}
    while True:  # a new worker process serving again (it goes busy at once: the queue is not empty)
        worker = (await client.call("daemon.status"))["workers"][0]
        if worker["pid"] not in (None, pid) and worker["state"] in ("ready", "busy"):
            break
        await asyncio.sleep(0.05)
    back = time.perf_counter() - killed
    done = await finish(client, ids - succeeded)
    lost = [job_id for job_id in ids if (await client.call("job.get", job_id=job_id))["attempts"] > 1]
    await client.close()
    again = max((done[job_id] for job_id in lost if job_id in done), default=killed) - killed
    return {"lost": len(lost), "ready": back, "again": again}


def run_daemon(root: Path, model: Path, config: dict[str, dict[str, Any]], work: Any) -> Any:
    daemon = DaemonProcess.create(Path(tempfile.mkdtemp(prefix="run-", dir=root)),
                                  {**config, "queue": {**config.get("queue", {}), **LIFTED}}, model_dir=model)
    daemon.start(timeout=300)
    try:
        return asyncio.run(work(daemon))
    finally:
        daemon.stop()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--jobs", type=int, default=16)
    parser.add_argument("--rounds", type=int, default=2, help="the two shapes alternated; medians shown")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="sai-bench-", dir="/tmp") as tmp:
        root = Path(tmp)
        model = build_tiny(root / "tiny")
        print(f"devices benchmark: tiny model, {args.jobs} jobs of 1 image, {args.size}² {args.steps} steps, "
              f"{os.cpu_count()} CPUs, load {os.getloadavg()[0]:.2f}", flush=True)
        rates: dict[str, list[float]] = {name: [] for name in SHAPES}
        for _ in range(args.rounds):
            for name, config in SHAPES.items():
                count = len(config.get("worker", {}).get("devices", ["cpu"]))
                rates[name].append(run_daemon(root, model, config, lambda d, c=count: throughput(
                    d, c, args.size, args.steps, args.jobs)))
        for name, values in rates.items():
            shown = " ".join(f"{v:.2f}" for v in values)
            print(f"  {name:<22} {statistics.median(values):6.2f} img/s   rounds {shown}")
        two, one = (statistics.median(rates[name]) for name in SHAPES)
        print(f"  ratio two workers / one worker: {two / one:.3f}", flush=True)
        cost = run_daemon(root, model, SHAPES["1 worker x 2 threads"],
                          lambda d: crash_cost(d, args.size, args.steps, args.jobs))
        print(f"worker crash (SIGKILL mid-batch, 1 worker): {cost['lost']} image(s) generated again, worker ready "
              f"{cost['ready']:.1f} s after the kill, the killed batch done again {cost['again']:.1f} s after it")
    return 0


if __name__ == "__main__":
    sys.exit(main())
