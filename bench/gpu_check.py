"""GPU check: one prepared script for a box with NVIDIA GPUs (every GPU it sees), in about 8 minutes.

    .venv/bin/python bench/gpu_check.py                 # on the GPU box; appends to docs/benchmarks.md
    .venv/bin/python bench/gpu_check.py --cpu           # dry run here: tiny model, CPU, ~2-4 minutes

Phases, each skipped with a note when the time left (`--minutes`) cannot hold it:
1. probe: torch, CUDA, the GPUs; NVML against torch per GPU (device total, and a 4 GiB block as
   NVML's per-process figure and torch's reserved figure see it): target within 1%.
2. build `sd15-shaped` (SD 1.5's sizes, random weights, made from code: nothing downloads) once.
3. raw: plain diffusers fp16, one image per call, on every GPU at once (one process each): the
   baseline, images/s per GPU.
4. daemon on GPU 0, `max_batch = 1`: a lone job's latency (submit to succeeded) and a full queue of
   single jobs, against raw: target overhead ≤ 1%.
5. daemon on GPU 0, `max_batch = --batch`: a full queue, batched, against raw single images:
   target ≥ 2×. Then a real CUDA OOM: a second process holds all but `--oom-leave-mb` of the GPU,
   a batch at 1024² runs into it (the worker splits it, or fails one image clearly), the holder
   exits, and the next job must succeed.
6. daemon on every GPU (`[worker] devices = "auto"`), batched: images/s in all, against N × step
   5's: target ≥ 0.95 × N (skipped with one GPU; on `--cpu`, two CPU workers).
7. a worker that leaks 512 MiB of GPU memory per call: the leak must be reported, the worker
   restarted, every job done once, and torch's allocated memory back to where it started.

Targets are judged on a GPU only; `--cpu` checks that every phase runs. Exits 1 when a target
or check fails.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from gpu_jobs import connect, finished, full_queue, lone_jobs, one_job, oom_jobs  # noqa: E402

from tests.harness import DaemonProcess  # noqa: E402

PARTS = Path(__file__).resolve().parent / "gpu_parts.py"
LEAKY = "bench.gpu_parts:LeakingPipelineForBench"
LIFTED_RATE = {"burst": 10**6, "rate_per_minute": 1e9}
PHASE_SECONDS = {"nvml": 20, "build": 60, "raw": 60, "single": 75, "batched": 90, "scaling": 75, "leak": 75}
"""What each phase needs at least, on an H100 with `sd15-shaped` (for the skip decision)."""


@dataclass
class Run:
    cpu: bool
    model: str
    family: str
    size: int
    steps: int
    jobs: int
    batch: int
    guidance: float
    oom_leave_mb: int
    deadline: float
    root: Path
    lines: list[str] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)
    figures: dict[str, Any] = field(default_factory=dict)
    model_dir: Path | None = None
    gpus: int = 0

    def say(self, line: str) -> None:
        print(line, flush=True)
        self.lines.append(line)

    def judge(self, ok: bool, what: str) -> str:
        if self.cpu:
            return "not judged on --cpu"
        if not ok:
            self.failures.append(what)
        return "met" if ok else "NOT met"

    def has_time(self, phase: str) -> bool:
        left = self.deadline - time.monotonic()
        if left < PHASE_SECONDS[phase] * (0.2 if self.cpu else 1.0):
            self.say(f"- {phase}: skipped, {left:.0f} s left")
            return False
        return True


def child(kind: str, spec: dict[str, Any], gpu: int | None = None, timeout: float = 300) -> dict[str, Any]:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "CUDA_DEVICE_ORDER": "PCI_BUS_ID"}
    if gpu is not None:
        env["CUDA_VISIBLE_DEVICES"] = str(gpu)
    out = subprocess.run([sys.executable, str(PARTS), kind, json.dumps(spec)], capture_output=True, text=True,
                         env=env, timeout=timeout)
    if out.returncode != 0:
        raise RuntimeError(f"{kind} child failed: {out.stderr[-1500:]}")
    return dict(json.loads(out.stdout.strip().splitlines()[-1]))


def children_at_once(kind: str, specs: list[tuple[dict[str, Any], int | None]]) -> list[dict[str, Any]]:
    """One child per GPU, all running together (what "every GPU at once" measures)."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "CUDA_DEVICE_ORDER": "PCI_BUS_ID"}
    procs = [subprocess.Popen([sys.executable, str(PARTS), kind, json.dumps(spec)], stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True,
                              env=env if gpu is None else {**env, "CUDA_VISIBLE_DEVICES": str(gpu)})
             for spec, gpu in specs]
    results = []
    for proc in procs:
        out, err = proc.communicate(timeout=600)
        if proc.returncode != 0:
            raise RuntimeError(f"{kind} child failed: {err[-1500:]}")
        results.append(json.loads(out.strip().splitlines()[-1]))
    return results


# -- phases ----------------------------------------------------------------------------------------------

def phase_probe(run: Run) -> None:
    seen = child("probe", {})
    run.gpus = 0 if run.cpu else int(seen["gpus"])
    run.say(f"- torch {seen['torch']} (CUDA {seen['cuda']}); GPUs: {', '.join(seen['names']) or 'none'}")
    if not run.cpu and run.gpus == 0:
        raise SystemExit("no CUDA GPU is visible to torch; use --cpu for the dry run")
    if run.cpu:
        run.say("- NVML vs torch: skipped (no GPU)")
        return
    if not run.has_time("nvml"):
        return
    for index, figures in enumerate(children_at_once("nvml", [({"index": i, "block_gib": 4}, i)
                                                              for i in range(run.gpus)])):
        total = abs(figures["nvml_total"] - figures["torch_total"]) / figures["torch_total"]
        block = abs(figures["nvml_delta"] - figures["torch_delta"]) / max(1, figures["torch_delta"])
        verdict = run.judge(total <= 0.01 and block <= 0.01, f"GPU {index}: NVML and torch differ by more than 1%")
        run.say(f"- GPU {index} {figures['name']}: total NVML {figures['nvml_total'] / 2**30:.2f} GiB, torch "
                f"{figures['torch_total'] / 2**30:.2f} GiB ({total:.2%}); 4 GiB block: NVML per-process "
                f"{figures['nvml_delta'] / 2**20:.0f} MiB, torch reserved {figures['torch_delta'] / 2**20:.0f} MiB "
                f"({block:.2%}): within 1% {verdict}")


def phase_build(run: Run) -> None:
    started = time.monotonic()
    target = run.root / "models" / run.model
    script = ("import sys; from pathlib import Path; from daemon.models.builders import build; "
              "build(sys.argv[1], Path(sys.argv[2]))")
    subprocess.run([sys.executable, "-c", script, run.model, str(target)], check=True, capture_output=True,
                   env={**os.environ, "HF_HUB_OFFLINE": "1"}, cwd=ROOT, timeout=600)
    run.model_dir = target
    run.say(f"- built {run.model} from code in {time.monotonic() - started:.0f} s")


def phase_raw(run: Run) -> None:
    spec = {"path": str(run.model_dir), "family": run.family, "size": run.size, "steps": run.steps,
            "jobs": run.jobs, "guidance": run.guidance, "cpu": run.cpu, "threads": 0}
    results = children_at_once("raw", [(spec, i) for i in range(max(1, run.gpus))] if not run.cpu else [(spec, None)])
    run.figures["raw"] = results
    for index, result in enumerate(results):
        run.say(f"- raw diffusers {result['dtype']} on {result['device']}{'' if run.cpu else f' {index}'}: "
                f"{result['img_s']:.3f} images/s, median {statistics.median(result['seconds']):.3f} s per image "
                f"(first call {result['warmup_s']:.1f} s), {run.jobs} images")


def daemon_config(run: Run, devices: Any, max_batch: int, **extra: dict[str, Any]) -> dict[str, dict[str, Any]]:
    config: dict[str, dict[str, Any]] = {
        "model": {"name": run.model, "path": str(run.model_dir), "device": "cpu" if run.cpu else "cuda"},
        "worker": {"devices": devices},
        "queue": {"max_batch": max_batch, **LIFTED_RATE},
        "defaults": {"width": run.size, "height": run.size, "steps": run.steps, "guidance": run.guidance},
        "limits": {"max_pixels": max(1048576, run.size * run.size)},
    }
    for section, values in extra.items():
        config.setdefault(section, {}).update(values)
    return config


def start(run: Run, name: str, config: dict[str, dict[str, Any]]) -> DaemonProcess:
    work = run.root / name
    work.mkdir()
    return DaemonProcess.create(work, config).start(timeout=300)


def phase_single(run: Run) -> None:
    daemon = start(run, "single", daemon_config(run, ["cpu"] if run.cpu else ["cuda:0"], 1))
    try:
        async def go() -> tuple[list[float], float, dict[str, Any]]:
            client = await connect(daemon)
            latency = await lone_jobs(client, run.jobs, run.size)
            rate = await full_queue(client, run.jobs * 2, run.size, offset=100)
            worker = (await client.call("daemon.status"))["workers"][0]
            await client.close()
            return latency, rate, worker
        latency, rate, worker = asyncio.run(go())
    finally:
        daemon.stop()
    raw = run.figures["raw"][0]
    raw_s = statistics.median(raw["seconds"])
    lone = statistics.median(latency) / raw_s - 1
    queued = raw["img_s"] / rate - 1
    run.figures["single_img_s"] = rate
    run.say(f"- daemon, {worker.get('device')} {worker.get('dtype')}, max_batch 1: a lone job "
            f"{statistics.median(latency):.3f} s (raw {raw_s:.3f} s, overhead {lone:+.1%}); a full queue of "
            f"single jobs {rate:.3f} images/s (raw {raw['img_s']:.3f}, overhead {queued:+.1%}): "
            f"≤ 1% {run.judge(queued <= 0.01, 'daemon overhead on single jobs above 1%')}")


def oom_and_recovery(run: Run, daemon: DaemonProcess) -> str:
    """A real OOM on GPU 0 (a second process holds its memory), then the next job with the memory back."""
    size = 256 if run.cpu else 1024
    holder = subprocess.Popen([sys.executable, str(PARTS), "hog", json.dumps({"leave_mb": run.oom_leave_mb})],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                              env={**os.environ, "CUDA_VISIBLE_DEVICES": "0", "CUDA_DEVICE_ORDER": "PCI_BUS_ID"})
    assert holder.stdout is not None and holder.stdin is not None
    try:
        held = json.loads(holder.stdout.readline())

        async def pressed() -> dict[str, dict[str, Any]]:
            client = await connect(daemon)
            try:
                return await oom_jobs(client, run.batch, size)
            finally:
                await client.close()
        states = asyncio.run(pressed())
    finally:
        holder.stdin.close()
        holder.wait(60)

    async def after_it() -> dict[str, Any]:
        client = await connect(daemon)
        try:
            return await one_job(client, size)
        finally:
            await client.close()
    after = asyncio.run(after_it())
    outcome = [s["state"] for s in states.values()]
    errors = sorted({str(s.get("error")) for s in states.values() if s["state"] != "succeeded"})
    clear = all("memory" in e for e in errors)
    ok = after["state"] == "succeeded" and clear and len(states) == run.batch
    verdict = run.judge(ok, "CUDA OOM: not recovered, or a job failed without an out-of-memory message")
    return (f"OOM with {held['held_mb']} MiB held by another process: {outcome.count('succeeded')} of {run.batch} "
            f"{size}² images succeeded{', failed: ' + errors[0][:160] if errors else ''}; the job after the "
            f"memory came back {after['state']}: recovered {verdict}")


def phase_batched(run: Run) -> None:
    daemon = start(run, "batched", daemon_config(run, ["cpu"] if run.cpu else ["cuda:0"], run.batch))
    try:
        async def go() -> float:
            client = await connect(daemon)
            await full_queue(client, run.batch, run.size, offset=500)  # the batch shape's first call
            rate = await full_queue(client, run.jobs * 4, run.size)
            await client.close()
            return rate
        rate = asyncio.run(go())
        oom = oom_and_recovery(run, daemon)
    finally:
        daemon.stop()
    raw = run.figures["raw"][0]["img_s"]
    run.figures["batched_img_s"] = rate
    run.say(f"- daemon, max_batch {run.batch}, full queue: {rate:.3f} images/s, {rate / raw:.2f}× raw single "
            f"images: ≥ 2× {run.judge(rate >= 2 * raw, 'batching below 2x raw single images')}")
    run.say(f"- {oom}")


def phase_scaling(run: Run) -> None:
    workers = 2 if run.cpu else run.gpus
    if workers < 2:
        run.say("- scaling: one GPU, nothing to scale")
        return
    config = daemon_config(run, ["cpu", "cpu"] if run.cpu else "auto", run.batch,
                           model={"threads": 2} if run.cpu else {})
    daemon = start(run, "scaling", config)
    try:
        async def go() -> tuple[float, list[dict[str, Any]]]:
            client = await connect(daemon)
            await full_queue(client, run.batch * workers, run.size, offset=700)
            rate = await full_queue(client, run.jobs * 4 * workers, run.size)
            seen = (await client.call("daemon.status"))["workers"]
            await client.close()
            return rate, seen
        rate, seen = asyncio.run(go())
    finally:
        daemon.stop()
    one = run.figures["batched_img_s"]
    ratio = rate / (one * workers)
    run.say(f"- {workers} workers ({', '.join(str(w.get('name')) for w in seen)}): {rate:.3f} images/s in all, "
            f"{rate / workers:.3f} per worker, {ratio:.2f} × N × one worker's: ≥ 0.95 "
            f"{run.judge(ratio >= 0.95, 'scaling across GPUs below 0.95 x N')}")


def phase_leak(run: Run) -> None:
    config = daemon_config(run, ["cpu"] if run.cpu else ["cuda:0"], 1,
                           worker={"pipeline_wrapper": LEAKY, "leak_window": 3, "leak_slope_mb": 20.0})
    daemon = start(run, "leak", config)
    try:
        async def go() -> str:
            client = await connect(daemon)
            await lone_jobs(client, 1, run.size)
            before = (await client.call("daemon.status"))["workers"][0]
            ids = {(await client.call("job.submit", prompt=f"leak {i}", seed=i, steps=4))["job_id"] for i in range(5)}
            states = await finished(client, ids)
            after_id = (await client.call("job.submit", prompt="after", seed=9, steps=4))["job_id"]
            [after] = (await finished(client, {after_id})).values()
            now = (await client.call("daemon.status"))["workers"][0]
            jobs = [await client.call("job.get", job_id=job_id) for job_id in ids]
            await client.close()
            key = "rss" if run.cpu else "torch_allocated"
            base, end = before["memory"].get(key, 0), now["memory"].get(key, 0)
            restarted = now.get("restarts", 0) > before.get("restarts", 0)
            once = all(s["state"] == "succeeded" for s in states.values()) and after["state"] == "succeeded" \
                and all(j["state"] == "succeeded" for j in jobs)
            back = end <= base * 1.05 + 64 * 2**20
            ok = restarted and once and back
            return (f"leak of {'48 MiB host' if run.cpu else '512 MiB GPU'} memory per call: worker restarted "
                    f"{restarted}, every job succeeded once {once}, {key} {base / 2**20:.0f} MiB before, "
                    f"{end / 2**20:.0f} MiB after the restart: recovered "
                    f"{run.judge(ok, 'leak not detected or memory not recovered')}")
        run.say(f"- {asyncio.run(go())}")
    finally:
        log = daemon.read_log()
        daemon.stop()
    if "possible leak" not in log:
        run.failures.append("the daemon's log has no 'possible leak' line")


def record(run: Run, args: argparse.Namespace) -> None:
    stamp = datetime.now(UTC).isoformat(timespec="seconds")
    names = ", ".join(str(r.get("device")) for r in run.figures.get("raw", []))
    text = (f"\n## GPU check {stamp}: {run.gpus} GPU(s), {names}\n\n`bench/gpu_check.py "
            f"{' '.join(sys.argv[1:])}`: {run.model} {run.size}² {run.steps} steps\n\n" + "\n".join(run.lines)
            + f"\n- result: {'all targets met' if not run.failures else 'NOT met: ' + '; '.join(run.failures)}\n")
    with (ROOT / "docs" / "benchmarks.md").open("a") as fh:
        fh.write(text)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--cpu", "--dry-run", action="store_true", help="tiny model on the CPU, small and quick")
    parser.add_argument("--minutes", type=float, default=8.0, help="the time box: phases that would overrun skip")
    parser.add_argument("--size", type=int, help="width and height (default 512; 64 with --cpu)")
    parser.add_argument("--steps", type=int, help="denoising steps (default 20; 4 with --cpu)")
    parser.add_argument("--jobs", type=int, help="images per measurement (default 10; 3 with --cpu)")
    parser.add_argument("--batch", type=int, default=8, help="queue.max_batch for the batched phases")
    parser.add_argument("--oom-leave-mb", type=int, default=3072, help="GPU memory the OOM phase leaves free")
    parser.add_argument("--record", action=argparse.BooleanOptionalAction, default=None,
                        help="append the results to docs/benchmarks.md (default: on a GPU, not with --cpu)")
    args = parser.parse_args()
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="sai-gpu-", dir="/tmp") as tmp:
        run = Run(cpu=args.cpu, model="tiny" if args.cpu else "sd15-shaped", family="sd15",
                  size=args.size or (64 if args.cpu else 512), steps=args.steps or (4 if args.cpu else 20),
                  jobs=args.jobs or (3 if args.cpu else 10), batch=4 if args.cpu else args.batch, guidance=7.5,
                  oom_leave_mb=args.oom_leave_mb, deadline=started + args.minutes * 60, root=Path(tmp))
        run.say(f"GPU check ({'--cpu dry run' if run.cpu else 'GPU'}): {run.model} {run.size}² {run.steps} steps, "
                f"{run.jobs} images per measurement, max_batch {run.batch}, {args.minutes:g} minutes")
        phase_probe(run)
        needs = {"raw": "model", "single": "raw", "batched": "raw", "scaling": "batched_img_s", "leak": "model"}
        for name, phase in (("build", phase_build), ("raw", phase_raw), ("single", phase_single),
                            ("batched", phase_batched), ("scaling", phase_scaling), ("leak", phase_leak)):
            needed = needs.get(name)
            if needed and (run.model_dir is None if needed == "model" else needed not in run.figures):
                run.say(f"- {name}: skipped, it needs the {needed} phase's result")
                continue
            if run.has_time(name):
                try:
                    phase(run)
                except (RuntimeError, TimeoutError, subprocess.SubprocessError) as exc:
                    run.failures.append(f"{name}: {exc}")
                    run.say(f"- {name}: FAILED: {str(exc)[:600]}")
        run.say("- SDXL-shaped: not run (no SDXL-shaped builder yet: daemon/models/builders.py makes sd15-shaped)")
        verdict = ("every phase ran (targets not judged on --cpu)" if run.cpu else "all targets met") \
            if not run.failures else "NOT met: " + "; ".join(run.failures)
        run.say(f"- took {time.monotonic() - started:.0f} s; {verdict}")
        if args.record if args.record is not None else not run.cpu:
            record(run, args)
    return 1 if run.failures else 0


if __name__ == "__main__":
    sys.exit(main())
