"""Daemon overhead: N jobs end to end through a real daemon (queue, worker process, output
path) against the same N generations in a plain diffusers loop, same tiny model and params,
measured one after the other in one run, alternated `--rounds` times (the medians are compared).
Prints throughputs and their ratio.

    .venv/bin/python bench/overhead.py [--sizes 64 256] [--jobs 24] [--steps 8] [--rounds 3]
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

TARGETS = {64: 0.90, 256: 0.97}


def raw_loop(model: str, size: int, jobs: int, steps: int, batch: int, threads: int) -> float:
    """Images per second from a bare pipeline loop (run in a child process like the worker)."""
    os.environ["HF_HUB_OFFLINE"] = "1"
    import torch
    from diffusers import StableDiffusionPipeline

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


def measure_daemon(root: Path, model: Path, size: int, jobs: int, steps: int, max_batch: int,
                   threads: int) -> float:
    work = Path(tempfile.mkdtemp(prefix="run-", dir=root))
    daemon = DaemonProcess.create(work, {"queue": {"max_batch": max_batch, "burst": 10**6, "rate_per_minute": 1e9},
                                         "model": {"threads": threads}}, model_dir=model)
    daemon.start()
    try:
        return asyncio.run(through_daemon(daemon, size, jobs, steps))
    finally:
        daemon.stop()


def main() -> int:
    if len(sys.argv) > 1 and sys.argv[1] == "--raw":
        model, size, jobs, steps, batch, threads = sys.argv[2], *map(int, sys.argv[3:8])
        print(raw_loop(model, size, jobs, steps, batch, threads))
        return 0
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[64, 256])
    parser.add_argument("--jobs", type=int, default=24)
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--batch", type=int, default=4, help="max_batch for the batching run")
    parser.add_argument("--threads", type=int, default=1, help="torch threads, the same for both sides")
    parser.add_argument("--rounds", type=int, default=3, help="raw and daemon runs, alternated; medians shown")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="sai-bench-", dir="/tmp") as tmp:
        root = Path(tmp)
        model = build_tiny(root / "tiny")
        print(f"overhead benchmark: tiny model, {args.jobs} jobs of 1 image, {args.steps} steps, "
              f"{args.threads} torch thread(s), {os.cpu_count()} CPUs, load {os.getloadavg()[0]:.2f}")
        print(f"{'size':>6} {'mode':<22} {'raw img/s':>10} {'daemon img/s':>13} {'ratio':>7} {'target':>7}")
        for size in args.sizes:
            jobs = args.jobs if size <= 128 else max(4, args.jobs // 3)
            raws, serveds = [], []
            for _ in range(args.rounds):  # alternate the sides: the machine's speed drifts between runs
                raws.append(measure_raw(model, size, jobs, args.steps, 1, args.threads))
                serveds.append(measure_daemon(root, model, size, jobs, args.steps, 1, args.threads))
            raw, served = statistics.median(raws), statistics.median(serveds)
            ratios = [d / r for r, d in zip(raws, serveds)]
            target = TARGETS.get(size)
            verdict = f">={target:.2f}" if target else "-"
            print(f"{size:>6} {'max_batch=1 (overhead)':<22} {raw:>10.2f} {served:>13.2f} {served / raw:>7.3f} "
                  f"{verdict:>7}"
                  f"   rounds: raw {' '.join(f'{r:.2f}' for r in raws)}, ratios {' '.join(f'{q:.3f}' for q in ratios)}")
            batched = measure_daemon(root, model, size, jobs, args.steps, args.batch, args.threads)
            print(f"{size:>6} {f'max_batch={args.batch} (batching)':<22} {raw:>10.2f} {batched:>13.2f} "
                  f"{batched / raw:>7.3f} {'>1 wanted':>7}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
