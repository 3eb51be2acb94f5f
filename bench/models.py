"""Model families: images/s and load time through a real daemon vs a bare diffusers loop, and switching cost.

For each built-in tiny family, on the same files in one run; and the cost of switching models when
the worker can hold only one.

    .venv/bin/python bench/models.py [--families tiny tiny-sdxl ...] [--jobs 32] [--rounds 3]
                                     [--size 128] [--steps 8] [--switches 6] [--pair tiny tiny-sdxl]

Each round (`--rounds`) runs, family by family, the two sides back to back, in an order that
alternates between rounds (this VM's speed drifts by tens of per cent within a minute, so a ratio is
taken between two measurements seconds apart, and the figure is the median of the rounds' ratios):
- the bare side: one child process per round (torch's default threads) that times the family's
  pipeline class `from_pretrained(local_files_only=True)` + `.to("cpu")`, then generates `--jobs`
  images in calls of the daemon's default `queue.max_batch`; at the end of the round it loads the
  `--pair` in turn (the previous one dropped first) `--switches` times;
- a `sai daemon` per round with every family configured (`[models.NAME]`) at default settings
  (torch's default threads, max_batch, outputs, watermarks and signing all on; only the submit rate
  limit is lifted): per family one warm-up job (the load) then `--jobs` jobs submitted to a paused
  queue and timed from resume to the last `succeeded`; the load's seconds come from the worker's
  `model` event as audited (`model.load` details);
- on both sides, the CPU time per image (the bare child's; the worker's, the daemon's and this
  client's): what the service adds per image, and so the ratio it allows when generation keeps
  every core busy (a machine with cores to spare does not pay it in throughput);
- a `sai daemon` with the pair configured and `worker.models_memory_mb` that holds one but not
  both, so each switch unloads the other (least recently used): jobs run one at a time, first on
  one model, then alternating; the extra time per alternating job is the switch's cost.
"""

from __future__ import annotations

import argparse
import gc
import json
import math
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import psutil
import uvloop

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from overhead import _wait_all

from daemon.client import DaemonClient
from daemon.config import defaults
from daemon.models.builders import BUILT_IN
from daemon.models.families import FAMILIES
from daemon.worker.launch import FIXED
from tests.harness import DaemonProcess

TINY = ("tiny", "tiny-sdxl", "tiny-sd3", "tiny-flux", "tiny-pixart")
START_UP = "tiny"
"""The daemons' default model, which their worker loads at start (its load is the cold one)."""
TARGET = 0.9
MIB = 2**20
LIFTED_RATE = {"burst": 10**6, "rate_per_minute": 1e9}
"""The only setting changed from the defaults: submits in a burst must not be rate limited."""


# -- the bare side (a child process) ---------------------------------------------------------------------

def bare_load(name: str, path: str) -> tuple[Any, float]:
    """The family's pipeline from `path` the way a bare script would, and the seconds it took."""
    import diffusers

    family = FAMILIES[BUILT_IN[name]]
    started = time.perf_counter()
    extra = {"add_watermarker": False} if family.name == "sdxl" else {}  # the daemon marks outputs itself
    pipe = getattr(diffusers, family.pipeline_class).from_pretrained(path, local_files_only=True, **extra)
    pipe = pipe.to("cpu")
    seconds = time.perf_counter() - started
    if family.scheduler_class == "DPMSolverMultistepScheduler":  # the daemon's default scheduler = "euler"
        pipe.scheduler = diffusers.EulerDiscreteScheduler.from_config(pipe.scheduler.config)
    pipe.set_progress_bar_config(disable=True)
    return pipe, seconds


def bare_generate(name: str, pipe: Any, size: int, jobs: int, steps: int, batch: int,
                  guidance: float) -> dict[str, float]:
    """Images per second, and this process's CPU milliseconds per image (all its threads)."""
    import torch

    family = FAMILIES[BUILT_IN[name]]

    def run(n: int, seed: int) -> None:
        extra: dict[str, Any] = {"guidance_scale": guidance}
        if family.negative_prompt:
            extra["negative_prompt"] = [""] * n
        if family.name == "pixart":
            extra["use_resolution_binning"] = False  # as the worker: the size asked for
        pipe(prompt=[f"bench {seed + i}" for i in range(n)], width=size, height=size, num_inference_steps=steps,
             generator=[torch.Generator().manual_seed(seed + i) for i in range(n)], output_type="np", **extra)

    run(1, 0)
    started, cpu = time.perf_counter(), time.process_time()
    for first in range(0, jobs, batch):
        run(min(batch, jobs - first), first)
    return {"img_s": jobs / (time.perf_counter() - started), "cpu_ms": (time.process_time() - cpu) / jobs * 1000}


def bare_child(spec: dict[str, Any]) -> None:
    """Serve the parent's commands, one JSON line each: `{"load": NAME}` (drops the model held),
    `{"run": NAME}`, `{"switch": true}`; each answered with one JSON line. It runs with the
    worker's fixed environment (hub off, no progress bars, library logging at errors only)."""
    import diffusers  # imported before any clock starts, as in the worker
    import transformers

    diffusers.utils.logging.disable_progress_bar()
    transformers.utils.logging.disable_progress_bar()
    if spec["families"][0] != START_UP:  # the worker loads it at start: later loads find the libraries imported
        bare_load(START_UP, spec["models"][START_UP])
    held: dict[str, Any] = {}
    for line in sys.stdin:
        command = json.loads(line)
        if "load" in command:
            held.clear()
            gc.collect()
            pipe, seconds = bare_load(command["load"], spec["models"][command["load"]])
            held[command["load"]] = pipe
            answer: dict[str, Any] = {"load_s": seconds}
        elif "run" in command:
            answer = bare_generate(command["run"], held[command["run"]], spec["size"], spec["jobs"],
                                   spec["steps"], spec["batch"], spec["guidance"])
        else:
            answer = {"switch_s": bare_switches(spec, held)}
        print(json.dumps(answer), flush=True)


def bare_switches(spec: dict[str, Any], holding: dict[str, Any]) -> float:
    switches = []
    for i in range(spec["switches"] + 1):
        name = spec["pair"][i % 2]
        started = time.perf_counter()
        holding.clear()  # the other model goes first, as in the worker's unload
        gc.collect()
        holding[name] = bare_load(name, spec["models"][name])[0]
        if i:
            switches.append(time.perf_counter() - started)
    return statistics.median(switches)


class BareSide:
    """The bare child process of one round."""

    def __init__(self, spec: dict[str, Any]) -> None:
        self.process = subprocess.Popen([sys.executable, __file__, "--bare", json.dumps(spec)], text=True,
                                        stdin=subprocess.PIPE, stdout=subprocess.PIPE, env={**os.environ, **FIXED})

    def ask(self, **command: Any) -> dict[str, Any]:
        assert self.process.stdin is not None and self.process.stdout is not None
        self.process.stdin.write(json.dumps(command) + "\n")
        self.process.stdin.flush()
        line = self.process.stdout.readline()
        if not line:
            raise SystemExit(f"the bare side exited with {self.process.wait()} on {command}")
        return dict(json.loads(line))

    def close(self) -> None:
        assert self.process.stdin is not None
        self.process.stdin.close()
        self.process.wait(60)


# -- through the daemon ----------------------------------------------------------------------------------

def start_daemon(root: Path, models: dict[str, Path], config: dict[str, dict[str, Any]]) -> DaemonProcess:
    """A daemon whose built-in models are the files built once for the run (linked into its state)."""
    work = Path(tempfile.mkdtemp(prefix="run-", dir=root))
    daemon = DaemonProcess.create(work, config, model_dir=models["tiny"])
    for name, path in models.items():
        if not (daemon.state_dir / "models" / name).exists():
            (daemon.state_dir / "models" / name).symlink_to(path)
    return daemon.start(timeout=180)


async def one_job(client: DaemonClient, model: str, params: dict[str, int], seed: int) -> None:
    job = await client.call("job.submit", prompt=f"bench {seed}", seed=seed, model=model, **params)
    await _wait_all(client, {job["job_id"]}, events=True)


async def model_loads(client: DaemonClient) -> list[dict[str, Any]]:
    entries = (await client.call("audit.tail", limit=1000))["entries"]
    return [e for e in entries if e["action"] in ("model.load", "model.unload")]


def cpu_seconds(daemon: DaemonProcess) -> dict[str, float]:
    """CPU seconds (user + system, all threads) so far of the daemon process, of its worker
    processes, and of this process (the client)."""
    assert daemon.proc is not None
    process = psutil.Process(daemon.proc.pid)

    def used(p: psutil.Process) -> float:
        times = p.cpu_times()
        return float(times.user + times.system)

    return {"daemon": used(process), "worker": sum(used(child) for child in process.children(recursive=True)),
            "client": used(psutil.Process())}


async def served_rate(client: DaemonClient, daemon: DaemonProcess, name: str, params: dict[str, int],
                      jobs: int) -> dict[str, float]:
    """Images per second from resume to the last `succeeded`, and CPU milliseconds per image of the
    worker, the daemon and this client over that time."""
    await client.call("queue.pause")
    ids = {(await client.call("job.submit", prompt=f"bench {i}", seed=i, model=name, **params))["job_id"]
           for i in range(jobs)}
    before = cpu_seconds(daemon)
    started = time.perf_counter()
    await client.call("queue.resume")
    await _wait_all(client, ids, events=True)
    rate = jobs / (time.perf_counter() - started)
    after = cpu_seconds(daemon)
    return {"img_s": rate, **{f"{part}_ms": (after[part] - before[part]) / jobs * 1000 for part in after}}


Figures = dict[str, dict[str, float]]
"""Per model name: `img_s`, `load_s`, and CPU milliseconds per image (`cpu_ms` on the bare side;
`worker_ms`, `daemon_ms`, `client_ms` through the daemon)."""


async def families_paired(daemon: DaemonProcess, bare: BareSide, names: list[str], size: int, jobs: int,
                          steps: int, bare_first: bool) -> tuple[Figures, Figures]:
    """Per family: both sides load it, then each generates `jobs` images, one right after the other."""
    client = await DaemonClient.connect(daemon.socket)
    await client.call("events.subscribe", topics=["job"])
    params = {"width": size, "height": size, "steps": steps}
    bare_results: Figures = {}
    served: Figures = {}
    for name in names:
        bare_results[name] = bare.ask(load=name)
        await one_job(client, name, params, 0)  # loads the model
        loads = [e for e in await model_loads(client) if e["action"] == "model.load" and e["subject"] == name]
        served[name] = {"load_s": float(loads[-1]["details"].get("seconds") or math.nan) if loads else math.nan}
        for side in ("bare", "daemon") if bare_first else ("daemon", "bare"):
            if side == "bare":
                bare_results[name].update(bare.ask(run=name))
            else:
                served[name].update(await served_rate(client, daemon, name, params, jobs))
    await client.close()
    return bare_results, served


async def switching_served(daemon: DaemonProcess, pair: tuple[str, str], size: int, steps: int,
                           switches: int) -> dict[str, float]:
    client = await DaemonClient.connect(daemon.socket)
    await client.call("events.subscribe", topics=["job"])
    params = {"width": size, "height": size, "steps": steps}
    for seed, name in enumerate(pair):  # both loaded once (files hashed, sizes measured)
        await one_job(client, name, params, seed)
    before = len(await model_loads(client))
    same, alternating = [], []
    for seed in range(switches):  # per-job medians: one job slowed by the machine moves neither
        started = time.perf_counter()
        await one_job(client, pair[1], params, seed)
        same.append(time.perf_counter() - started)
    for seed in range(switches):
        started = time.perf_counter()
        await one_job(client, pair[seed % 2], params, seed)
        alternating.append(time.perf_counter() - started)
    changes = (await model_loads(client))[before:]
    await client.close()
    loads = [float(e["details"]["seconds"]) for e in changes if e["action"] == "model.load"]
    unloads = [float(e["details"]["seconds"]) for e in changes if e["action"] == "model.unload"]
    return {"switch_s": statistics.median(alternating) - statistics.median(same), "job_s": statistics.median(same),
            "loads": len(loads), "unloads": len(unloads),
            "worker_s": statistics.median(loads) + statistics.median(unloads) if loads and unloads else math.nan}


def one_of_two_mb(models: dict[str, Path], pair: tuple[str, str]) -> int:
    """A models_memory_mb that holds either model of the pair but not both (sized from their files)."""
    sizes = [sum(f.stat().st_size for f in models[name].rglob("*.safetensors")) for name in pair]
    budget = math.ceil(max(sizes) * 1.05 / MIB)
    if budget * MIB >= sum(sizes):
        raise SystemExit(f"models {pair[0]} and {pair[1]} are too unequal in size for a budget that holds one "
                         f"but not both ({sizes[0] / MIB:.1f} and {sizes[1] / MIB:.1f} MiB); pick another --pair")
    return budget


def build_models(root: Path, names: list[str]) -> dict[str, Path]:
    """Built once by the daemon's own builder, in a child so this process never imports torch."""
    script = ("import sys; from pathlib import Path; from daemon.models.builders import build\n"
              "for name in sys.argv[2:]: build(name, Path(sys.argv[1]) / name)")
    subprocess.run([sys.executable, "-c", script, str(root / "models"), *names], check=True,
                   env={**os.environ, "HF_HUB_OFFLINE": "1"}, capture_output=True)
    return {name: root / "models" / name for name in names}


# -- the run ---------------------------------------------------------------------------------------------

def spread(values: list[float], fmt: str = "{:.2f}") -> str:
    return " ".join(fmt.format(v) for v in values)


def main() -> int:
    if len(sys.argv) > 2 and sys.argv[1] == "--bare":
        bare_child(json.loads(sys.argv[2]))
        return 0
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--families", nargs="+", default=list(TINY), choices=TINY, help="the tiny models to run")
    parser.add_argument("--jobs", type=int, default=64,
                        help="images per family per round, each side: enough that the first hand-off and the "
                             "last writes are a small part of the time")
    parser.add_argument("--size", type=int, default=128, help="width and height")
    parser.add_argument("--steps", type=int, default=8, help="denoising steps per image")
    parser.add_argument("--rounds", type=int, default=5,
                        help="rounds; in each, the two sides of a family run back to back (the order alternates "
                             "between rounds); medians shown")
    parser.add_argument("--switches", type=int, default=6, help="model switches timed per round")
    parser.add_argument("--pair", nargs=2, default=["tiny", "tiny-sdxl"], choices=TINY, metavar="MODEL",
                        help="the two models switched between")
    args = parser.parse_args()
    if args.jobs < 1 or args.rounds < 1 or args.switches < 2 or args.pair[0] == args.pair[1]:
        parser.error("--jobs and --rounds must be at least 1, --switches at least 2, and --pair two different models")
    pair = (args.pair[0], args.pair[1])
    args.families.sort(key=lambda name: name != START_UP)  # first, as in the worker: its load is the cold one
    names = list(dict.fromkeys(["tiny", *args.families, *pair]))
    shipped = defaults()
    batch, guidance = int(shipped.queue.max_batch), float(shipped.defaults.guidance)
    with tempfile.TemporaryDirectory(prefix="sai-bench-", dir="/tmp") as tmp:
        root = Path(tmp)
        models = build_models(root, names)
        budget = one_of_two_mb(models, pair)
        spec = {"models": {n: str(p) for n, p in models.items()}, "families": args.families,
                "size": args.size, "jobs": args.jobs, "steps": args.steps, "batch": batch, "guidance": guidance,
                "pair": pair, "switches": args.switches}
        extra: dict[str, dict[str, Any]] = {name: {} for name in names if name != START_UP}
        print(f"models benchmark: {args.size}x{args.size}, {args.steps} steps, {args.jobs} images per family, "
              f"{args.rounds} rounds; default settings (torch's default threads: {os.cpu_count()} CPUs; "
              f"max_batch {batch}, the bare loop calls with {batch} images; guidance {guidance}; outputs and "
              f"marks on), submit rate limit lifted; load {os.getloadavg()[0]:.2f}")
        bare_rounds: list[dict[str, Any]] = []
        served_rounds: list[dict[str, dict[str, float]]] = []
        switch_rounds: list[dict[str, float]] = []
        for round_ in range(args.rounds):
            bare = BareSide(spec)
            daemon = start_daemon(root, models, {"queue": LIFTED_RATE, "models": extra})
            try:
                bare_results, served = uvloop.run(families_paired(daemon, bare, args.families, args.size, args.jobs,
                                                                   args.steps, bare_first=round_ % 2 == 0))
                bare_rounds.append({"families": bare_results, "switch_s": bare.ask(switch=True)["switch_s"]})
                served_rounds.append(served)
            finally:
                daemon.stop()
                bare.close()
            daemon = start_daemon(root, models, {"queue": LIFTED_RATE, "worker": {"models_memory_mb": budget},
                                                 "model": {"name": pair[0]},
                                                 "models": {pair[1]: {}}})
            try:
                switch_rounds.append(uvloop.run(switching_served(daemon, pair, args.size, args.steps,
                                                                  args.switches)))
            finally:
                daemon.stop()
        report(args.families, bare_rounds, served_rounds, switch_rounds, pair, budget)
        print(f"machine load at the end {os.getloadavg()[0]:.2f}")
    return 0


def report(families: list[str], bare_rounds: list[dict[str, Any]], served_rounds: list[dict[str, dict[str, float]]],
           switch_rounds: list[dict[str, float]], pair: tuple[str, str], budget: int) -> None:
    med = statistics.median
    print("ratio: the median of the rounds' ratios (each round times the two sides of a family back to back)")
    print(f"{'model':<12} {'bare img/s':>10} {'daemon img/s':>13} {'ratio':>6} {'target':>7}   "
          f"{'bare load s':>11} {'daemon load s':>13} {'ratio':>6}   rounds: throughput ratios; load ratios")
    for name in families:
        bare = [r["families"][name]["img_s"] for r in bare_rounds]
        served = [r[name]["img_s"] for r in served_rounds]
        bare_load = [r["families"][name]["load_s"] for r in bare_rounds]
        served_load = [r[name].get("load_s", math.nan) for r in served_rounds]
        ratios = [s / b for s, b in zip(served, bare)]
        load_ratios = [s / b for s, b in zip(served_load, bare_load)]
        print(f"{name:<12} {med(bare):>10.2f} {med(served):>13.2f} {med(ratios):>6.3f} "
              f"{'>=' + str(TARGET):>7}   {med(bare_load):>11.3f} {med(served_load):>13.3f} "
              f"{med(load_ratios):>6.2f}   {spread(ratios, '{:.3f}')}; {spread(load_ratios)}")
    cpu_report(families, bare_rounds, served_rounds)
    bare_switch = [r["switch_s"] for r in bare_rounds]
    served_switch = [r["switch_s"] for r in switch_rounds]
    worker_switch = [r["worker_s"] for r in switch_rounds]
    print(f"switching {pair[0]} <-> {pair[1]} (worker.models_memory_mb = {budget}: one fits, two do not), "
          "per switch:")
    print(f"  bare: drop the other, from_pretrained + .to('cpu')       {med(bare_switch):.3f} s   "
          f"({spread(bare_switch, '{:.3f}')})")
    print(f"  daemon, worker's own unload + load seconds               {med(worker_switch):.3f} s   "
          f"({spread(worker_switch, '{:.3f}')})")
    print(f"  daemon, end to end (median job alternating - same model) {med(served_switch):.3f} s   "
          f"({spread(served_switch, '{:.3f}')}); ratio to bare {med(served_switch) / med(bare_switch):.2f}")
    seen = " ".join(f"{int(r['loads'])}/{int(r['unloads'])}" for r in switch_rounds)
    print(f"  a same-model job took {med(r['job_s'] for r in switch_rounds):.3f} s; "
          f"loads/unloads seen per round while alternating: {seen}")

def cpu_report(families: list[str], bare_rounds: list[dict[str, Any]],
               served_rounds: list[dict[str, dict[str, float]]]) -> None:
    """CPU per image on each side (medians of the rounds): what the service adds per image, and
    the throughput ratio that leaves on a machine whose cores generation keeps busy."""
    med = statistics.median
    print("CPU per image, ms (all threads; medians of the rounds). ceiling: bare / (worker + daemon + client),")
    print("the throughput ratio the daemon side's CPU allows when generation keeps every core busy")
    print(f"{'model':<12} {'bare':>7} {'worker':>7} {'daemon':>7} {'client':>7} {'ceiling':>8}")
    for name in families:
        bare = med(r["families"][name]["cpu_ms"] for r in bare_rounds)
        parts = {part: med(r[name][f"{part}_ms"] for r in served_rounds) for part in ("worker", "daemon", "client")}
        print(f"{name:<12} {bare:>7.1f} {parts['worker']:>7.1f} {parts['daemon']:>7.1f} {parts['client']:>7.1f} "
              f"{bare / sum(parts.values()):>8.3f}")


if __name__ == "__main__":
    sys.exit(main())
