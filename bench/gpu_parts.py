"""The child processes of bench/gpu_check.py, and the leaking wrapper its leak phase loads.

`python bench/gpu_parts.py KIND SPEC_JSON` runs one child and prints one JSON line: `probe` (what
torch sees), `nvml` (NVML's memory figures against torch's for the one GPU it sees), `raw` (plain
diffusers on one device: the baseline), `hog` (holds all but `leave_mb` of its GPU until stdin
closes). The parent gives each child its GPU through CUDA_VISIBLE_DEVICES.

`LeakingPipelineForBench` is loaded by a real worker through `worker.pipeline_wrapper`
("bench.gpu_parts:LeakingPipelineForBench"): it keeps device memory (host memory on a CPU) alive
after every call. Nothing at module level imports torch or the project: the worker imports this.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path
from typing import Any

LEAK_MB = {"cuda": 512, "cpu": 48}
"""Kept per pipeline call by the leaking wrapper, by device kind."""


class LeakingPipelineForBench:
    def __init__(self, pipe: Any) -> None:
        self._pipe = pipe
        self._kept: list[Any] = []

    def __getattr__(self, name: str) -> Any:
        return getattr(self._pipe, name)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        import torch

        result = self._pipe(*args, **kwargs)
        device = self._pipe.device
        size = LEAK_MB["cuda" if device.type == "cuda" else "cpu"] * 2**20
        if device.type == "cuda":
            self._kept.append(torch.ones(size, dtype=torch.uint8, device=device))
        else:
            block = bytearray(size)
            block[::4096] = b"\x01" * len(block[::4096])  # touched: counts in RSS
            self._kept.append(block)
        return result


def probe(_: dict[str, Any]) -> dict[str, Any]:
    import torch

    count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    return {"torch": torch.__version__, "cuda": torch.version.cuda, "gpus": count,
            "names": [torch.cuda.get_device_name(i) for i in range(count)]}


def _nvml_handle(pynvml: Any, uuid: str, index: int) -> Any:
    """NVML's handle of the GPU torch sees as 0: by UUID, else by index (NVML ignores CUDA_VISIBLE_DEVICES)."""
    for i in range(pynvml.nvmlDeviceGetCount()):
        handle = pynvml.nvmlDeviceGetHandleByIndex(i)
        theirs = pynvml.nvmlDeviceGetUUID(handle)
        theirs = theirs.decode() if isinstance(theirs, bytes) else theirs
        if uuid and theirs.lower().removeprefix("gpu-") == uuid.lower().removeprefix("gpu-"):
            return handle
    return pynvml.nvmlDeviceGetHandleByIndex(index)


def nvml(spec: dict[str, Any]) -> dict[str, Any]:
    """Totals, and a block of `block_gib` as NVML's per-process figure and torch's reserved figure see it."""
    import pynvml
    import torch

    pynvml.nvmlInit()
    torch.zeros(1, device="cuda")
    handle = _nvml_handle(pynvml, str(getattr(torch.cuda.get_device_properties(0), "uuid", "")), spec["index"])

    def used_by_me() -> int:
        return sum(p.usedGpuMemory or 0 for p in pynvml.nvmlDeviceGetComputeRunningProcesses(handle)
                   if p.pid == os.getpid())

    base_nvml, base_torch = used_by_me(), torch.cuda.memory_reserved()
    block = torch.empty(int(spec["block_gib"] * 2**30), dtype=torch.uint8, device="cuda")
    torch.cuda.synchronize()
    figures = {"name": torch.cuda.get_device_name(0), "nvml_total": pynvml.nvmlDeviceGetMemoryInfo(handle).total,
               "torch_total": torch.cuda.get_device_properties(0).total_memory,
               "nvml_delta": used_by_me() - base_nvml, "torch_delta": torch.cuda.memory_reserved() - base_torch}
    del block
    return figures


def raw(spec: dict[str, Any]) -> dict[str, Any]:
    """Plain diffusers, as a user would write it: the family's pipeline class in fp16 on CUDA (bf16
    for sd3/flux, fp32 on the CPU), one image per call; seconds per image after one warm-up call."""
    os.environ["HF_HUB_OFFLINE"] = "1"
    import diffusers
    import torch

    from daemon.models.families import FAMILIES
    from daemon.models.performance import choose_dtype

    family = FAMILIES[spec["family"]]
    device = "cuda" if torch.cuda.is_available() and not spec.get("cpu") else "cpu"
    if spec.get("threads"):
        torch.set_num_threads(int(spec["threads"]))
    extra: dict[str, Any] = {"add_watermarker": False} if family.name == "sdxl" else {}
    if family.name in ("sd15", "sd2"):
        extra = {"safety_checker": None, "requires_safety_checker": False}
    dtype = getattr(torch, choose_dtype("auto", family.name, device))
    pipe = getattr(diffusers, family.pipeline_class).from_pretrained(
        spec["path"], local_files_only=True, torch_dtype=dtype, **extra).to(device)
    pipe.set_progress_bar_config(disable=True)

    def one(seed: int) -> float:
        started = time.perf_counter()
        pipe(prompt=f"bench {seed}", width=spec["size"], height=spec["size"], num_inference_steps=spec["steps"],
             guidance_scale=spec["guidance"], generator=torch.Generator(device).manual_seed(seed), output_type="np")
        if device == "cuda":
            torch.cuda.synchronize()
        return time.perf_counter() - started

    warm = one(0)
    seconds = [one(seed) for seed in range(1, spec["jobs"] + 1)]
    return {"device": device, "dtype": str(dtype).removeprefix("torch."), "warmup_s": warm, "seconds": seconds,
            "img_s": len(seconds) / sum(seconds)}


def hog(spec: dict[str, Any]) -> dict[str, Any]:
    """Hold all of the GPU's free memory but `leave_mb`, until stdin closes (prints before waiting)."""
    import torch

    if not torch.cuda.is_available():
        print(json.dumps({"held_mb": 0}), flush=True)
        sys.stdin.read()
        return {"held_mb": 0}
    free, _ = torch.cuda.mem_get_info()
    held = max(0, free - int(spec["leave_mb"]) * 2**20)
    block = torch.empty(held, dtype=torch.uint8, device="cuda")
    print(json.dumps({"held_mb": held // 2**20, "free_mb": torch.cuda.mem_get_info()[0] // 2**20}), flush=True)
    sys.stdin.read()
    del block
    return {"held_mb": held // 2**20}


CHILDREN = {"probe": probe, "nvml": nvml, "raw": raw, "hog": hog}

if __name__ == "__main__":
    if len(sys.argv) < 2 or sys.argv[1] not in CHILDREN:
        print(f"children of bench/gpu_check.py: {' | '.join(CHILDREN)} SPEC_JSON (run bench/gpu_check.py instead)")
        sys.exit(0)
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    result = CHILDREN[sys.argv[1]](json.loads(sys.argv[2]) if len(sys.argv) > 2 else {})
    if sys.argv[1] != "hog":
        print(json.dumps(result))
