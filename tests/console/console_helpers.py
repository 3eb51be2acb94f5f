"""Shared by the console tests: fixed daemon state for snapshots, and waiting on a running app."""

from __future__ import annotations

import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from textual.pilot import Pilot

from console.app import SaiConsole
from console.connection import JobChanged

NOW = 1_800_000_000.0


def iso(epoch: float) -> str:
    return datetime.fromtimestamp(epoch, UTC).isoformat().replace("+00:00", "Z")


STATUS: dict[str, Any] = {
    "version": "0.1.0", "pid": 4242, "installation": "gpu-box-01", "host": "gpu-box-01", "embedded": False,
    "uptime": 3725.0, "queue": {"paused": True, "queued": 3, "running": 1},
    "worker": {"state": "ready", "pid": 4300, "model_id": "tiny", "device": "cpu", "restarts": 0,
               "memory": {"rss": 470 * 2**20}},
    "you": {"user": "alice", "uid": 1000, "role": "admin"},
}


def fixed_job(n: int, state: str, priority: str = "normal", user: str = "alice",
              prompt: str = "a lighthouse on a cliff at dusk", progress: float = 0.0) -> dict[str, Any]:
    finished = state in ("succeeded", "failed", "cancelled")
    return {"job_id": f"j{n:012x}", "state": state, "priority": priority, "user": user, "prompt_visible": True,
            "params": {"prompt": prompt, "width": 64, "height": 64, "steps": 4, "seed": n, "count": 1},
            "created_at": iso(NOW - 60 * n - 30), "started_at": iso(NOW - 20) if state != "queued" else None,
            "finished_at": iso(NOW - 5 * n) if finished else None, "progress": progress, "outputs": [],
            "error": "generation failed: out of memory" if state == "failed" else None}


JOBS = [fixed_job(1, "running", progress=0.45), fixed_job(2, "queued", "critical", "bob", "portrait of an astronaut"),
        fixed_job(3, "queued", "high"), fixed_job(4, "queued", "low", "carol", "red fox in the snow"),
        fixed_job(5, "succeeded"), fixed_job(6, "failed", user="bob"), fixed_job(7, "cancelled")]

AUDIT = [{"seq": i, "time": iso(NOW - 100 + i), "actor": {"user": "alice", "uid": 1000, "pid": 1}, "action": action,
          "subject": subject, "leaf_hash": f"{i:02x}" * 32}
         for i, (action, subject) in enumerate([("audit.init", ""), ("daemon.start", ""),
                                                 ("job.submit", "j000000000001"), ("job.start", "j000000000001")])]


def offline_app(**kwargs: Any) -> SaiConsole:
    """An app with no daemon and a frozen clock: feed it with `fill`."""
    return SaiConsole(None, clock=lambda: NOW, **kwargs)


def fill(app: SaiConsole) -> None:
    """The fixed state above, through the public entry points the daemon's answers take (each
    pane's `reload` hands its answer to the same `load`)."""
    main = app.main
    main.header.link = "up"
    main.header.status = STATUS
    main.table.load(JOBS)
    main.audit.load({"entries": list(AUDIT), "size": len(AUDIT)})
    main.audit.show_checkpoint("size 4, root q83vEjRWeJAGQ…")
    main.memory.set_worker(STATUS["worker"])
    main.memory.load(CPU_SAMPLE)
    main.alerts.load({"alerts": []}, {"alerts": []})
    app.post_message(JobChanged(JOBS[0]))


async def until(pilot: Pilot[Any], predicate: Callable[[], Any], timeout: float = 30.0, what: str = "") -> Any:
    """Let the app run until `predicate()` is truthy; fail after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what or predicate}")
        await pilot.pause(0.05)


def screen_text(app: SaiConsole) -> str:
    """The characters on the screen now (what a person would read)."""
    update = app.screen._compositor.render_update(full=True, screen_stack=app._background_screens)
    strips = getattr(update, "strips", [])
    return "\n".join("".join(segment.text for segment in strip) for strip in strips)


def screen_line(app: SaiConsole, *keys: str) -> str:
    """The first line of the screen that holds every one of `keys` (a job id, a header), or ""."""
    return next((line for line in screen_text(app).splitlines() if all(key in line for key in keys)), "")


def fleet_row(app: SaiConsole, name: str) -> str:
    """The screen line of box `name`'s row in the fleet pane: its workers cell ("1/1 free") tells
    it from an alert or a job row that names the same box on the same line of the screen."""
    return screen_line(app, name, "/1 free")


def notifications(app: SaiConsole) -> list[str]:
    return [n.message for n in app._notifications]


async def connected(pilot: Pilot[Any], app: SaiConsole) -> None:
    await until(pilot, lambda: app.main.header.link == "up" and "pid" in app.main.header.status, 30,
                "the console to attach and load")


async def listed(pilot: Pilot[Any], app: SaiConsole, count: int) -> None:
    """Until the queue table shows `count` jobs, each with its prompt fetched."""
    table = app.main.table
    await until(pilot, lambda: len(table.shown) == count and all(
        "prompt" in j["params"] for j in table.jobs.values()), 10, f"{count} jobs with their prompts")


GIB = 2**30
SAMPLE: dict[str, Any] = {
    "ts": NOW, "time": iso(NOW), "interval": 1.0,
    "host": {"cpu_percent": 12.5, "load_1m": 0.4, "memory": {"used": 18 * GIB, "total": 24 * GIB, "percent": 75.0}},
    "daemon": {"pid": 4242, "rss": 180 * 2**20, "cpu_percent": 1.0},
    "worker": {"pid": 4300, "rss": 3 * GIB, "cpu_percent": 90.0, "gpu_memory": 70 * GIB, "torch_allocated": 60 * GIB,
               "torch_reserved": 66 * GIB, "torch_peak": 64 * GIB},
    "gpu": {"available": True, "reason": None, "driver": "560.35", "count": 2}, "gpu_error": None,
    "gpus": [{"index": 0, "name": "NVIDIA H100 80GB HBM3", "memory": {"used": 72 * GIB, "total": 80 * GIB},
              "utilization": 97, "temperature": 71, "power_w": 612.0},
             {"index": 1, "name": "NVIDIA H100 80GB HBM3", "memory": {"used": 8 * GIB, "total": 80 * GIB},
              "utilization": 3, "temperature": 38, "power_w": "n/a"}],
}
CPU_SAMPLE: dict[str, Any] = {
    **SAMPLE, "gpu": {"available": False, "reason": "no NVIDIA driver", "driver": None, "count": 0},
    "gpu_error": "NVML: no NVIDIA driver on this host", "gpus": [],
    "worker": {"pid": 4300, "rss": 470 * 2**20, "cpu_percent": 0.0}}
"""A quiet CPU-only host, as the tiny model runs in the tests."""
SNAPSHOT: dict[str, Any] = {**SAMPLE, "history": {"interval": 1.0, "ts": [NOW - 40 + i for i in range(40)], "series": {
    "host.memory.used": [(12 + 6 * i / 39) * GIB for i in range(40)], "host.memory.total": [24 * GIB] * 40,
    "gpus.0.memory.used": [(20 + 52 * (i % 20) / 19) * GIB for i in range(40)], "gpus.0.memory.total": [80 * GIB] * 40,
    "gpus.1.memory.used": [8 * GIB] * 40, "gpus.1.memory.total": [80 * GIB] * 40}}}
ALERTS = [
    {"alert_id": 7, "key": "gpu_memory:gpu0", "severity": "critical", "state": "active", "count": 12,
     "message": "GPU0 memory 97% used (critical at 97%)", "first_seen": iso(NOW - 600), "last_seen": iso(NOW - 5),
     "acked": False},
    {"alert_id": 5, "key": "host_memory", "severity": "warning", "state": "acked", "count": 3,
     "message": "host memory 91% used (warning at 90%)", "first_seen": iso(NOW - 900), "last_seen": iso(NOW - 300),
     "acked": True, "acked_by": "alice"},
    {"alert_id": 4, "key": "worker.crash", "severity": "warning", "state": "cleared", "count": 1,
     "message": "crashed: worker process was killed by SIGKILL", "first_seen": iso(NOW - 1800),
     "last_seen": iso(NOW - 1800), "cleared_at": iso(NOW - 1794), "acked": False},
]


def fill_monitoring(app: SaiConsole) -> None:
    """GPUs busy and alerts raised (the shapes daemon/monitor documents), through the panes' `load`."""
    main = app.main
    main.memory.load(SNAPSHOT)
    main.alerts.load({"alerts": [a for a in ALERTS if a["state"] != "cleared"]},
                     {"alerts": [a for a in ALERTS if a["state"] == "cleared"]})
