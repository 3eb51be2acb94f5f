"""Benchmark of the console. Prints numbers and ratios to the targets; it never passes or fails.

    .venv/bin/python bench/console.py [--jobs 1000] [--idle 30] [--rounds 3]

A real daemon (`sai daemon`, queue paused, no worker) holds `--jobs` jobs; the console attaches
to it in this process with Textual's headless driver (layout and compositing run, nothing is
written to a terminal), at 160x50.

1. Idle: console CPU over `--idle` seconds with every job in the table and metrics at 1 Hz
   (the daemon's own `metrics` events when it offers them, else a sample posted each second),
   as a share of one core (target < 5%), and its RSS.
2. Key press to updated screen, with every job in the table: filter keystrokes (`/` and typing,
   each re-filters all jobs; esc clears), moving (j, k, G, g), opening a job's detail and going
   back. p50 and p95 per kind (target p95 < 100 ms).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import psutil

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from textual import events  # noqa: E402
from textual._compositor import CompositorUpdate  # noqa: E402

from console.app import SaiConsole  # noqa: E402
from console.connection import MetricsSample  # noqa: E402
from daemon.client import DaemonClient  # noqa: E402
from daemon.protocol import PRIORITIES, RpcError  # noqa: E402

CONFIG = """[queue]
start_paused = true
rate_per_minute = 1000000.0
burst = 100000
max_queued_per_user = 100000
[model]
preload = false
"""
PROMPTS = ("a lighthouse on a cliff at dusk", "portrait of an astronaut, oil painting", "a red fox in the snow",
           "isometric city block at night, neon", "still life with lemons and a blue jug")
QUIET = 0.05
SAMPLE = {"time": None, "host": {"memory": {"used": 12 * 2**30, "total": 24 * 2**30}}, "gpus": [],
          "gpu_error": "synthetic sample", "worker": {"rss": 2**30}, "daemon": {"rss": 2**28}}


def start_daemon(root: Path) -> subprocess.Popen[bytes]:
    (root / "config.toml").write_text(CONFIG)
    env = {**os.environ, "XDG_CONFIG_HOME": str(root)}
    env.pop("SAI_SOCKET", None)
    proc = subprocess.Popen([sys.executable, "-m", "console.cli", "daemon", "--socket", str(root / "d.sock"),
                             "--state-dir", str(root / "state"), "--config", str(root / "config.toml")],
                            cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=(root / "daemon.log").open("wb"))
    deadline = time.monotonic() + 60
    while not (root / "d.sock").exists():
        if proc.poll() is not None or time.monotonic() > deadline:
            raise SystemExit(f"the daemon did not start:\n{(root / 'daemon.log').read_text()}")
        time.sleep(0.05)
    return proc


async def fill_queue(socket: Path, count: int) -> None:
    async with await DaemonClient.connect(socket) as client:
        for start in range(0, count, 100):
            await asyncio.gather(*(client.call("job.submit", prompt=f"{PROMPTS[i % len(PROMPTS)]} #{i}",
                                               priority=PRIORITIES[i % len(PRIORITIES)])
                                   for i in range(start, min(count, start + 100))))


async def until(pilot: Any, predicate: Any, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise SystemExit("timed out waiting for the console")
        await pilot.pause(0.05)


class Screen:
    """Times of the app's screen updates. Headless Textual skips turning an update into terminal
    bytes; this does that too (the work a real terminal run does), so it is counted."""

    def __init__(self, app: SaiConsole) -> None:
        self.app = app
        self.painted: list[float] = []
        self._display = app._display
        app._display = self.display  # type: ignore[method-assign]

    def display(self, screen: Any, renderable: Any) -> None:
        if isinstance(renderable, CompositorUpdate):
            renderable.render_segments(self.app.console)
        self._display(screen, renderable)
        self.painted.append(time.perf_counter())

    async def key(self, key: str) -> tuple[float, float] | None:
        """Seconds from the key event to the first screen update and to the last one it caused
        (updates 50 ms apart or closer count as one burst: the screen has settled)."""
        char = key if len(key) == 1 else {"space": " ", "number_sign": "#"}.get(key)
        self.painted.clear()
        start = time.perf_counter()
        assert self.app._driver is not None
        self.app._driver.send_message(events.Key(key, char))
        deadline = start + 5.0
        while time.perf_counter() < deadline:
            await asyncio.sleep(0.002)
            if self.painted and time.perf_counter() - self.painted[-1] > QUIET:
                return self.painted[0] - start, self.painted[-1] - start
        return None


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


async def metrics_offered(socket: Path) -> bool:
    async with await DaemonClient.connect(socket) as client:
        try:
            await client.call("metrics.snapshot", history_seconds=0)
            return True
        except RpcError:
            return False


async def run(args: argparse.Namespace, socket: Path) -> None:
    await fill_queue(socket, args.jobs)
    live_metrics = await metrics_offered(socket)
    app = SaiConsole(str(socket))
    me = psutil.Process()
    async with app.run_test(size=(160, 50)) as pilot:
        table = app.main.table
        await until(pilot, lambda: len(table.jobs) >= args.jobs and len(table.shown) >= args.jobs, 60)
        await pilot.pause(1.0)
        print(f"rows in the queue table: {len(table.shown)}")
        print("metrics: " + ("the daemon's metrics events" if live_metrics
                             else "a sample posted to the console each second (the daemon offers no metrics)"))

        cpu0, wall0 = me.cpu_times(), time.monotonic()
        while time.monotonic() - wall0 < args.idle:
            if not live_metrics:
                app.post_message(MetricsSample({**SAMPLE, "time": time.time()}))
            await asyncio.sleep(1.0)
        cpu1, wall = me.cpu_times(), time.monotonic() - wall0
        share = ((cpu1.user - cpu0.user) + (cpu1.system - cpu0.system)) / wall
        print(f"idle {wall:.1f} s: console CPU {share:.2%} of one core (target < 5%: {share / 0.05:.2f} of it)")
        rss = me.memory_info().rss / 2**20
        peak = max(rss, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
        print(f"console RSS: {rss:.1f} MiB (peak {peak:.1f} MiB; the bench's own client and imports included)")

        # Time only what a key causes: stop the clock-driven repaints (header uptime, ages) and drop
        # metrics events from here on, else one landing inside a key's burst would count as its paint.
        for widget in (app.main.header, table):
            for timer in list(widget._timers):
                timer.stop()
        app.main.memory.add_sample = lambda sample: None  # type: ignore[method-assign]
        screen = Screen(app)
        plan = {"filter": ["slash", "f", "o", "x", "space", "number_sign", "1", "escape"],
                "move": ["j"] * 10 + ["k"] * 5 + ["G", "g"], "detail": ["enter", "escape"] * 3}
        kinds: dict[str, list[tuple[float, float]]] = {kind: [] for kind in plan}
        cpu = time.process_time()
        for _ in range(args.rounds):
            for kind, keys in plan.items():
                for key in keys:
                    took = await screen.key(key)
                    if took is not None:
                        kinds[kind].append(took)
        presses = sum(len(v) for v in kinds.values())
        print(f"key press to updated screen, {len(table.jobs)} jobs (ms; first update / settled screen):")
        every: list[tuple[float, float]] = []
        for kind, values in kinds.items():
            every += values
            print(f"  {kind:<7} n={len(values):<4}" + "".join(
                f"  p{q * 100:.0f} {pct([v[0] for v in values], q) * 1000:6.1f}"
                f" / {pct([v[1] for v in values], q) * 1000:6.1f}"
                for q in (0.5, 0.95)))
        p95 = pct([v[1] for v in every], 0.95)
        print(f"  all     n={len(every):<4}  p50 {pct([v[0] for v in every], 0.5) * 1000:6.1f} / "
              f"{pct([v[1] for v in every], 0.5) * 1000:6.1f}  p95 {pct([v[0] for v in every], 0.95) * 1000:6.1f} / "
              f"{p95 * 1000:6.1f}  (target p95 < 100 ms: settled p95 is {p95 / 0.1:.2f} of it)")
        print(f"  console CPU per key press: {(time.process_time() - cpu) / max(1, presses) * 1000:.1f} ms "
              "(wall times above include waiting for a CPU on a busy machine)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--jobs", type=int, default=1000)
    parser.add_argument("--idle", type=float, default=30.0)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="sai-bench-", dir="/tmp"))
    daemon = start_daemon(root)
    try:
        import textual

        print(f"console bench: textual {textual.__version__}, headless driver at 160x50, real daemon "
              f"(queue paused, no worker), {os.cpu_count()} CPU(s)")
        asyncio.run(run(args, root / "d.sock"))
    finally:
        daemon.send_signal(signal.SIGTERM)
        try:
            daemon.wait(30)
        except subprocess.TimeoutExpired:
            daemon.kill()
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
