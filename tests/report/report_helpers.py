"""Helpers for the report tests: jobs for a real daemon to run, `sai` as a subprocess, and job rows
shaped as `report.jobs` returns them."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from PIL import Image

from daemon.client import DaemonClient
from daemon.timefmt import rfc3339
from tests.harness import DaemonProcess

PROMPT = "report-secret-prompt lighthouse"
SHAPES = [(64, 64, 2, 1), (64, 64, 2, 2), (64, 64, 2, 1), (96, 96, 3, 1), (96, 96, 3, 1), (96, 96, 3, 1)]
CONFIG = {"defaults": {"width": 64, "height": 64, "steps": 2}, "model": {"threads": 1}}


def logo_config(root: Path) -> dict[str, dict[str, Any]]:
    """CONFIG with a logo watermark drawn from a PNG made under `root` (deleting it makes the
    output step of later jobs fail for real)."""
    logo = root / "logo.png"
    Image.new("RGBA", (40, 20), (200, 30, 30, 255)).save(logo)
    return {**CONFIG, "watermark": {"visible_kind": "logo", "logo": str(logo)}}


@dataclass
class ReportDaemon:
    daemon: DaemonProcess
    jobs: list[dict[str, Any]]


async def _settled(client: DaemonClient, ids: list[str]) -> list[dict[str, Any]]:
    async with asyncio.timeout(180):
        while True:
            jobs = [await client.call("job.get", job_id=job_id) for job_id in ids]
            if all(job["state"] in ("succeeded", "failed", "cancelled") for job in jobs):
                return jobs
            await asyncio.sleep(0.1)


async def run_jobs(socket: Path, logo: Path) -> list[dict[str, Any]]:
    """Three 64x64 jobs of 2 steps (one of 2 images), three 96x96 jobs of 3 steps, one job
    cancelled while the queue was paused, and a last 64x64 job whose outputs cannot be written
    (the watermark's logo, `logo`, is deleted once the others are done: generation runs, the
    output step fails); returns each job as `job.get` shows it once all are done."""
    client = await DaemonClient.connect(socket)
    try:
        await client.call("queue.pause")
        cancelled = await client.call("job.submit", prompt=PROMPT, width=64, height=64, steps=2)
        await client.call("job.cancel", job_id=cancelled["job_id"])
        await client.call("queue.resume")
        ids = [cancelled["job_id"]]
        for width, height, steps, count in SHAPES:
            reply = await client.call("job.submit", prompt=PROMPT, width=width, height=height, steps=steps,
                                      count=count)
            ids.append(reply["job_id"])
        await _settled(client, ids)
        logo.unlink()
        ids.append((await client.call("job.submit", prompt=PROMPT, width=64, height=64, steps=2))["job_id"])
        return await _settled(client, ids)
    finally:
        await client.close()


T0 = 1_795_000_020.0  # a whole minute (a multiple of 60), so minute buckets start at T0




def row(job_id: str, created: float, started: float | None, finished: float, state: str = "succeeded",
        size: int = 64, steps: int = 4, count: int = 1, error_kind: str | None = None,
        peak: int | None = None, rss: int | None = None, batch_images: int | None = None,
        model: str = "tiny") -> dict[str, Any]:
    """A `report.jobs` row; times are seconds after T0."""
    return {"job_id": job_id, "state": state, "priority": "normal", "user": "alice", "model_id": model,
            "width": size, "height": size, "steps": steps, "guidance": 7.5, "count": count,
            "created_at": rfc3339(T0 + created), "started_at": None if started is None else rfc3339(T0 + started),
            "finished_at": rfc3339(T0 + finished), "attempts": 1, "error_kind": error_kind,
            "batch_jobs": None if batch_images is None else 1, "batch_images": batch_images,
            "peak_bytes_per_image": peak, "worker_rss": rss}
