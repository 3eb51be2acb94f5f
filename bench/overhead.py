"""Daemon overhead: N jobs end to end through a real daemon (queue, worker process, output
path) against the same N generations in a plain diffusers loop, same tiny model and params,
measured one after the other in one run, alternated `--rounds` times (the medians are compared).
Prints throughputs and their ratio.

The first lines use the daemon's default settings (torch's default threads on both sides, marks,
C2PA and every output on, the shipped `max_batch`; only the submit rate limit is lifted so the
bench can queue its jobs): what a user gets. `--one-thread` adds, labelled, the older variant that
pins torch to 1 thread on both sides and sends one job per batch, which leaves a core free for the
daemon and so hides its cost on a 2-core box.

    .venv/bin/python bench/overhead.py [--cases 256x20 256x4 64x4] [--jobs 24] [--rounds 3] [--one-thread]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from daemon.client import DaemonClient
from tests.harness import DaemonProcess, build_tiny

TARGETS = {(256, 20): 0.97, (256, 4): 0.90}
LIFTED = {"burst": 10**6, "rate_per_minute": 1e9}
"""The only setting the default lines change: the submit rate limit (the bench queues its jobs at once)."""


def raw_loop(model: str, size: int, jobs: int, steps: int, batch: int, threads: int) -> float:
    """Images per second from a bare pipeline loop (run in a child process like the worker)."""
    os.environ["HF_HUB_OFFLINE"] = "1"
    import torch
    from diffusers import StableDiffusionPipeline

    if threads:
        torch.set_num_threads(threads)
    pipe = StableDiffusionPipeline.from_pretrained(model, local_files_only=True, use_safetensors=True)
    pipe.set_progress_bar_config(disable=True)

    def run(n: int, seed: int) -> None:
        pipe(prompt=[f"bench {seed + i}" for i in range(n)], negative_prompt=[""] * n, width=size, height=size,
             num_inference_steps=steps, guidance_scale=7.5,
             generator=[torch.Generator().manual_seed(seed + i) for i in range(n)], output_type="np")

    run(1, 0)
    started = time.perf_counter()
    for first in range(0, jobs, batch):
        run(min(batch, jobs - first), first)
    return jobs / (time.perf_counter() - started)


async def through_daemon(daemon: DaemonProcess, size: int, jobs: int, steps: int) -> float:
    client = await DaemonClient.connect(daemon.socket)
    params = dict(width=size, height=size, steps=steps, guidance=7.5)
    warm = (await client.call("job.submit", prompt="warm-up", seed=0, **params))["job_id"]
    await _wait_all(client, {warm})
    await client.call("queue.pause")
    ids = {(await client.call("job.submit", prompt=f"bench {i}", seed=i, **params))["job_id"] for i in range(jobs)}
    await client.call("events.subscribe", topics=["job"])
    started = time.perf_counter()
    await client.call("queue.resume")
    await _wait_all(client, ids, events=True)
    elapsed = time.perf_counter() - started
    await client.close()
    return jobs / elapsed


async def _wait_all(client: DaemonClient, ids: set[str], events: bool = False) -> None:
    pending = set(ids)
    while pending:
        if events:
            event = await client.next_event(timeout=600)
            data = event["data"] if event else {}
            if data.get("kind") == "state" and data["state"] in ("succeeded", "failed", "cancelled"):
                if data["state"] != "succeeded":
                    raise RuntimeError(f"{data['job_id']} {data['state']}")
                pending.discard(data["job_id"])
        else:
            for job_id in list(pending):
                job = await client.call("job.get", job_id=job_id)
                if job["state"] == "succeeded":
                    pending.discard(job_id)
                elif job["state"] in ("failed", "cancelled"):
                    raise RuntimeError(f"{job_id} {job['state']}: {job['error']}")
            await asyncio.sleep(0.05)


def measure_raw(model: Path, size: int, jobs: int, steps: int, batch: int, threads: int) -> float:
    out = subprocess.run([sys.executable, __file__, "--raw", str(model), str(size), str(jobs), str(steps), str(batch),
                          str(threads)], capture_output=True, text=True, check=True)
    return float(out.stdout.strip().splitlines()[-1])


def measure_daemon(root: Path, model: Path, size: int, jobs: int, steps: int, max_batch: int | None,
                   threads: int, pixel_processes: int | None = None) -> float:
    """`max_batch` None, `threads` 0 and `pixel_processes` None leave the daemon's defaults."""
    work = Path(tempfile.mkdtemp(prefix="run-", dir=root))
    queue: dict[str, object] = dict(LIFTED) if max_batch is None else {**LIFTED, "max_batch": max_batch}
    config: dict[str, dict[str, object]] = {"queue": queue}
    if threads:
        config["model"] = {"threads": threads}
    if pixel_processes is not None:
        config["outputs"] = {"pixel_processes": pixel_processes}
    daemon = DaemonProcess.create(work, config, model_dir=model)
    daemon.start()
    try:
        return asyncio.run(through_daemon(daemon, size, jobs, steps))
    finally:
        daemon.stop()


def case(text: str) -> tuple[int, int]:
    size, _, steps = text.partition("x")
    return int(size), int(steps)


def compare(root: Path, model: Path, size: int, steps: int, jobs: int, rounds: int, max_batch: int | None,
            threads: int, label: str, pixel_processes: int | None = None) -> None:
    raws, serveds = [], []
    for _ in range(rounds):  # alternate the sides: the machine's speed drifts between runs
        raws.append(measure_raw(model, size, jobs, steps, 1, threads))
        serveds.append(measure_daemon(root, model, size, jobs, steps, max_batch, threads, pixel_processes))
    raw, served = statistics.median(raws), statistics.median(serveds)
    ratios = [d / r for r, d in zip(raws, serveds)]
    target = TARGETS.get((size, steps)) if threads == 0 else None
    verdict = f">={target:.2f}" if target else "report"
    print(f"{size:>5}² {steps:>3} {label:<34} {raw:>9.2f} {served:>12.2f} {served / raw:>6.3f} {verdict:>7}"
          f"   rounds: raw {' '.join(f'{r:.2f}' for r in raws)}, ratios {' '.join(f'{q:.3f}' for q in ratios)}",
          flush=True)


def main() -> int:
    if len(sys.argv) > 1 and sys.argv[1] == "--raw":
        model, size, jobs, steps, batch, threads = sys.argv[2], *map(int, sys.argv[3:8])
        print(raw_loop(model, size, jobs, steps, batch, threads))
        return 0
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", type=case, nargs="+", default=[(256, 20), (256, 4), (64, 4)],
                        help="SIZExSTEPS, e.g. 256x20")
    parser.add_argument("--jobs", type=int, default=24, help="jobs at 64² (a third of them, at least 4, above 128²)")
    parser.add_argument("--rounds", type=int, default=3, help="raw and daemon runs, alternated; medians shown")
    parser.add_argument("--one-thread", action="store_true",
                        help="also the older variant: 1 torch thread on both sides, max_batch = 1 (labelled)")
    parser.add_argument("--pixel-processes", type=int, nargs="*", default=[],
                        help="also the defaults with [outputs] pixel_processes set to each of these (labelled)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="sai-bench-", dir="/tmp") as tmp:
        root = Path(tmp)
        model = build_tiny(root / "tiny")
        print(f"overhead benchmark: tiny model, jobs of 1 image, {os.cpu_count()} CPUs, "
              f"load {os.getloadavg()[0]:.2f}")
        print(f"{'size':>6} {'steps':>3} {'daemon settings':<34} {'raw img/s':>9} {'daemon img/s':>12} "
              f"{'ratio':>6} {'target':>7}")
        for size, steps in args.cases:
            jobs = args.jobs if size <= 128 else max(4, args.jobs // 3)
            compare(root, model, size, steps, jobs, args.rounds, None, 0, "defaults (torch threads, marks on)")
            for processes in args.pixel_processes:
                compare(root, model, size, steps, jobs, args.rounds, None, 0,
                        f"defaults, pixel_processes={processes}", processes)
            if args.one_thread:
                compare(root, model, size, steps, jobs, args.rounds, 1, 1, "1 torch thread both, max_batch=1")
    return 0


if __name__ == "__main__":
    sys.exit(main())
