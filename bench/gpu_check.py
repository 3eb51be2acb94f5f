"""GPU check, for a machine with an NVIDIA GPU: NVML readings against torch's own figures, the
`sd15-shaped` model in fp16 through a real daemon, and the results appended to
docs/benchmarks.md. Prints what it measured; exits non-zero when a check fails.

    .venv/bin/python bench/gpu_check.py [--steps 20] [--size 512]
"""

from __future__ import annotations

import argparse
import asyncio
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from daemon.client import DaemonClient  # noqa: E402
from tests.harness import DaemonProcess  # noqa: E402

NVML_VS_TORCH = r'''
import json, torch, pynvml
pynvml.nvmlInit()
handle = pynvml.nvmlDeviceGetHandleByIndex(0)
def nvml_proc_used():
    procs = pynvml.nvmlDeviceGetComputeRunningProcesses(handle)
    return sum(p.usedGpuMemory or 0 for p in procs if p.pid == __import__("os").getpid())
torch.cuda.init(); torch.zeros(1, device="cuda")
base_proc = nvml_proc_used(); base_reserved = torch.cuda.memory_reserved()
block = torch.empty(4 * 2**30, dtype=torch.uint8, device="cuda")
torch.cuda.synchronize()
out = {
  "name": pynvml.nvmlDeviceGetName(handle),
  "nvml_total": pynvml.nvmlDeviceGetMemoryInfo(handle).total,
  "torch_total": torch.cuda.get_device_properties(0).total_memory,
  "nvml_process_delta": nvml_proc_used() - base_proc,
  "torch_reserved_delta": torch.cuda.memory_reserved() - base_reserved,
}
print(json.dumps(out))
'''


def nvml_vs_torch() -> dict:
    import json

    out = subprocess.run([sys.executable, "-c", NVML_VS_TORCH], capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


async def through_daemon(daemon: DaemonProcess, size: int, steps: int) -> dict:
    client = await DaemonClient.connect(daemon.socket)
    results = {}
    for label in ("first (cold)", "second (warm)"):
        started = time.perf_counter()
        job_id = (await client.call("job.submit", prompt="a lighthouse at dusk", width=size, height=size,
                                    steps=steps, seed=1))["job_id"]
        while (job := await client.call("job.get", job_id=job_id))["state"] not in ("succeeded", "failed"):
            await asyncio.sleep(0.1)
        if job["state"] != "succeeded":
            raise RuntimeError(job["error"])
        results[label] = time.perf_counter() - started
    status = await client.call("daemon.status")
    snapshot = await client.call("metrics.snapshot")
    await client.close()
    # The latest sample is at the top.
    return {"seconds": results, "worker": status["worker"], "gpu": snapshot.get("gpus")}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--size", type=int, default=512)
    args = parser.parse_args()
    failures = []
    figures = nvml_vs_torch()
    print("NVML vs torch:", figures)
    if abs(figures["nvml_total"] - figures["torch_total"]) > 0.02 * figures["torch_total"]:
        failures.append("device total differs by more than 2% between NVML and torch")
    if abs(figures["nvml_process_delta"] - figures["torch_reserved_delta"]) > 256 * 2**20:
        failures.append("per-process memory from NVML differs from torch's reserved delta by more than 256 MiB")
    with tempfile.TemporaryDirectory(prefix="sai-gpu-", dir="/tmp") as tmp:
        daemon = DaemonProcess.create(Path(tmp), {"model": {"name": "sd15-shaped", "device": "cuda"}})
        daemon.start()
        try:
            result = asyncio.run(through_daemon(daemon, args.size, args.steps))
        finally:
            daemon.stop()
    worker = result["worker"]
    print("daemon:", result["seconds"], worker.get("device"), worker.get("dtype"), worker.get("memory"))
    print("gpu pane data:", result["gpu"])
    if worker.get("dtype") != "float16" or worker.get("device") != "cuda":
        failures.append(f"worker ran {worker.get('device')}/{worker.get('dtype')}, expected cuda/float16")
    stamp = datetime.now(UTC).isoformat(timespec="seconds")
    lines = [f"\n## GPU check {stamp}: {figures['name']}\n",
             f"- NVML total {figures['nvml_total'] / 2**30:.2f} GiB, "
             f"torch total {figures['torch_total'] / 2**30:.2f} GiB",
             f"- 4 GiB block: NVML per-process delta {figures['nvml_process_delta'] / 2**20:.0f} MiB, "
             f"torch reserved delta {figures['torch_reserved_delta'] / 2**20:.0f} MiB",
             f"- sd15-shaped fp16 {args.size}² {args.steps} steps through the daemon: "
             + ", ".join(f"{k} {v:.2f} s" for k, v in result["seconds"].items()),
             f"- worker memory after the job: {worker.get('memory')}",
             f"- checks: {'all passed' if not failures else '; '.join(failures)}"]
    with (ROOT / "docs" / "benchmarks.md").open("a") as fh:
        fh.write("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
