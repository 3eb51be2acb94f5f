"""Plain PNG outputs under the state dir (until the protected output path replaces this sink)."""

from __future__ import annotations

import hashlib
import io
import json
import os
from pathlib import Path
from typing import Any

from PIL import Image
from PIL.PngImagePlugin import PngInfo

from daemon.queue.jobs import Job


def atomic_write(path: Path, data: bytes, mode: int = 0o600) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    try:
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


class PlainPngSink:
    def __init__(self, outputs_dir: Path) -> None:
        self.outputs_dir = outputs_dir

    def write(self, job: Job, index: int, shape: tuple[int, ...], pixels: bytes) -> dict[str, Any]:
        height, width = shape[0], shape[1]
        image = Image.frombytes("RGB", (width, height), pixels)
        meta = PngInfo()
        meta.add_itxt("sai:job", json.dumps({"job_id": job.job_id, "index": index, "params": job.params,
                                             "model_id": job.model_id, "seed": job.params["seed"] + index,
                                             "prompt": job.prompt, "negative_prompt": job.negative_prompt}))
        buffer = io.BytesIO()
        image.save(buffer, format="PNG", pnginfo=meta)
        data = buffer.getvalue()
        path = self.outputs_dir / f"{job.job_id}-{index}.png"
        atomic_write(path, data)
        return {"index": index, "path": str(path), "sha256": hashlib.sha256(data).hexdigest(),
                "width": width, "height": height}
