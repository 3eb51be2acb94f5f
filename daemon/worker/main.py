"""Worker process entry point: `python -m daemon.worker.main SPEC_JSON`.

Loads the model once, then runs batches sent on stdin, reporting on the protocol stream (the
original stdout; stray prints from libraries are sent to stderr instead). Cancel requests are
read by a separate thread so they take effect at the next denoising step.
"""

from __future__ import annotations

import json
import os
import queue
import signal
import sys
import threading
import time
import traceback
from pathlib import Path
from typing import Any

from daemon.worker.ipc import SyncWriter


class Cancelled(Exception):
    """Raised from the step callback when every job in the running chunk was cancelled."""


class Worker:
    def __init__(self, spec: dict[str, Any], out: SyncWriter) -> None:
        self.spec = spec
        self.out = out
        self.commands: queue.Queue[dict[str, Any] | None] = queue.Queue()
        self.cancelled: set[str] = set()
        self.lock = threading.Lock()
        self.pipe: Any = None
        self.device = "cpu"

    def load(self) -> None:
        import diffusers
        import torch
        import transformers

        from daemon.models.loading import ModelSpec, load_pipeline, resolve, weights_sha256

        diffusers.utils.logging.disable_progress_bar()
        transformers.utils.logging.disable_progress_bar()
        if self.spec.get("threads"):
            torch.set_num_threads(int(self.spec["threads"]))
        wanted = self.spec.get("device", "auto")
        self.device = "cuda" if wanted == "cuda" or (wanted == "auto" and torch.cuda.is_available()) else "cpu"
        dtype = torch.float16 if self.device == "cuda" else torch.float32
        model = ModelSpec(self.spec["model"], self.spec.get("path", ""), self.spec.get("config_dir", ""))
        started = time.monotonic()
        path = resolve(model, Path(self.spec["state_dir"]))
        digest = weights_sha256(path)
        self.pipe = load_pipeline(path, model, self.device, dtype, self.spec.get("scheduler", "euler"))
        self.out.send({"ev": "ready", "model_id": model.model_id, "weights_sha256": digest,
                       "path": str(path), "device": self.device, "dtype": str(dtype).removeprefix("torch."),
                       "max_tokens": int(self.pipe.tokenizer.model_max_length),
                       "load_seconds": round(time.monotonic() - started, 3), "pid": os.getpid(),
                       "memory": self.memory()})

    def memory(self) -> dict[str, Any]:
        import psutil
        import torch

        figures: dict[str, Any] = {"rss": psutil.Process().memory_info().rss}
        if self.device == "cuda":
            figures.update(torch_allocated=torch.cuda.memory_allocated(),
                           torch_reserved=torch.cuda.memory_reserved(),
                           torch_peak=torch.cuda.max_memory_allocated())
            free, total = torch.cuda.mem_get_info()
            figures.update(device_free=free, device_total=total)
        return figures

    def read_commands(self) -> None:
        for line in sys.stdin.buffer:
            try:
                command = json.loads(line)
            except json.JSONDecodeError:
                print(f"worker: ignoring malformed command: {line[:80]!r}", file=sys.stderr)
                continue
            if command.get("op") == "cancel":
                with self.lock:
                    self.cancelled.update(command.get("job_ids", []))
            else:
                self.commands.put(command)
        self.commands.put(None)

    def serve(self) -> None:
        threading.Thread(target=self.read_commands, name="commands", daemon=True).start()
        while (command := self.commands.get()) is not None:
            if command.get("op") == "shutdown":
                break
            if command.get("op") == "run":
                self.run(command)

    def is_cancelled(self, job_id: str) -> bool:
        with self.lock:
            return job_id in self.cancelled

    def run(self, batch: dict[str, Any]) -> None:
        import torch

        batch_id = batch["batch_id"]
        items: list[dict[str, Any]] = batch["items"]
        chunk_size = max(1, int(batch.get("chunk", len(items))))
        chunks = [items[i:i + chunk_size] for i in range(0, len(items), chunk_size)]
        steps = int(batch["steps"])
        total = len(chunks) * steps
        if self.device == "cuda":
            torch.cuda.reset_peak_memory_stats()
        try:
            for number, chunk in enumerate(chunks):
                active = [item for item in chunk if not self.is_cancelled(item["job_id"])]
                if not active:
                    continue

                def on_step(pipe: Any, step: int, timestep: Any, kwargs: dict[str, Any],
                            active: list[dict[str, Any]] = active, number: int = number) -> dict[str, Any]:
                    if all(self.is_cancelled(item["job_id"]) for item in active):
                        raise Cancelled()
                    done = number * steps + step + 1
                    self.out.send({"ev": "progress", "batch_id": batch_id, "step": done, "steps": total})
                    return kwargs

                try:
                    result = self.pipe(
                        prompt=[item["prompt"] for item in active],
                        negative_prompt=[item.get("negative_prompt") or "" for item in active],
                        width=int(batch["width"]), height=int(batch["height"]),
                        num_inference_steps=steps, guidance_scale=float(batch["guidance"]),
                        generator=[torch.Generator(self.device).manual_seed(int(item["seed"])) for item in active],
                        output_type="np", callback_on_step_end=on_step,
                    )
                except Cancelled:
                    continue
                images = (result.images * 255).round().clip(0, 255).astype("uint8")
                for item, image in zip(active, images):
                    if self.is_cancelled(item["job_id"]):
                        continue
                    self.out.send({"ev": "image", "batch_id": batch_id, "job_id": item["job_id"],
                                   "index": item["index"], "shape": list(image.shape)}, image.tobytes())
        except Exception as exc:  # reported to the daemon, which fails or retries the jobs
            kind = "oom" if isinstance(exc, (MemoryError, torch.OutOfMemoryError)) else "error"
            traceback.print_exc(file=sys.stderr)
            self.out.send({"ev": "failed", "batch_id": batch_id, "kind": kind,
                           "error": f"{type(exc).__name__}: {exc}", "memory": self.memory()})
            return
        with self.lock:
            cancelled = sorted({item["job_id"] for item in items} & self.cancelled)
            self.cancelled.difference_update(item["job_id"] for item in items)
        self.out.send({"ev": "done", "batch_id": batch_id, "cancelled": cancelled, "memory": self.memory()})


def main() -> int:
    # Ctrl-C in the daemon's terminal reaches the whole process group; the daemon decides.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    spec = json.loads(sys.argv[1])
    protocol_stream = os.fdopen(os.dup(sys.stdout.fileno()), "wb")
    os.dup2(sys.stderr.fileno(), sys.stdout.fileno())
    out = SyncWriter(protocol_stream)
    worker = Worker(spec, out)
    try:
        worker.load()
    except Exception as exc:
        traceback.print_exc(file=sys.stderr)
        out.send({"ev": "load_failed", "error": f"{type(exc).__name__}: {exc}"})
        return 3
    worker.serve()
    return 0


if __name__ == "__main__":
    code = main()
    sys.stderr.flush()
    # The command reader thread is blocked in stdin; skip interpreter teardown rather than wait on it.
    os._exit(code)
