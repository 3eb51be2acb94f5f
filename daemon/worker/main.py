"""Worker process entry point: `python -I -m daemon.worker.main SPEC_JSON` (daemon.worker.launch).

Loads the start-up model, then runs batches sent on stdin, reporting on the protocol stream (the
original stdout; stray prints from libraries are sent to stderr instead). A batch names its model:
one not held is loaded first (daemon.worker.holding); `{"op": "unload", "name": ...}` drops one.
Cancel requests are read by a separate thread so they take effect at the next denoising step.

The hub is switched off in `main` before anything imports diffusers or transformers (only `load`
does): launch.py puts the same variables in the worker's environment; this holds however the
worker was started.
"""

from __future__ import annotations

import functools
import json
import os
import queue
import signal
import sys
import threading
import time
import traceback
from collections import deque
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from daemon.models.errors import ModelError
from daemon.worker.calls import call_arguments
from daemon.worker.ipc import SyncWriter
from daemon.worker.launch import OFFLINE
from daemon.worker.speed import vae_for_call

if TYPE_CHECKING:
    from daemon.models.loading import ModelSpec
    from daemon.worker.holding import Held, Models


class Cancelled(Exception):
    """Raised from the step callback when every job in the running chunk was cancelled."""


def is_out_of_memory(exc: BaseException) -> bool:
    """CUDA raises OutOfMemoryError; the CPU allocator raises a RuntimeError or MemoryError."""
    import torch

    if isinstance(exc, (MemoryError, torch.OutOfMemoryError)):
        return True
    text = str(exc)
    return isinstance(exc, RuntimeError) and ("can't allocate memory" in text or "out of memory" in text)


def cap_address_space(headroom_mb: int) -> None:
    """Limit the process to its current address space plus `headroom_mb` (0: no limit)."""
    import resource

    if headroom_mb <= 0:
        return
    with open("/proc/self/status") as status:
        size = next(int(line.split()[1]) * 1024 for line in status if line.startswith("VmSize:"))
    limit = size + headroom_mb * 2**20
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))


class PeakMemory:
    """The most memory a block of work added: torch's peak on CUDA; on the CPU the kernel's
    peak RSS (VmHWM), reset through /proc/self/clear_refs before the block."""

    def __init__(self, device: str) -> None:
        self.device = device
        self.delta = 0

    @staticmethod
    def _status(field: str) -> int:
        with open("/proc/self/status") as status:
            return next(int(line.split()[1]) * 1024 for line in status if line.startswith(field))

    def __enter__(self) -> PeakMemory:
        import torch

        if self.device == "cuda":
            torch.cuda.reset_peak_memory_stats()
            self.base = torch.cuda.memory_allocated()
        else:
            try:
                with open("/proc/self/clear_refs", "w") as refs:
                    refs.write("5")
            except OSError:
                pass
            self.base = self._status("VmRSS:")
        return self

    def __exit__(self, *exc: object) -> None:
        import torch

        peak = torch.cuda.max_memory_allocated() if self.device == "cuda" else self._status("VmHWM:")
        self.delta = max(0, peak - self.base)


class Worker:
    def __init__(self, spec: dict[str, Any], out: SyncWriter) -> None:
        self.spec = spec
        self.out = out
        self.commands: queue.Queue[dict[str, Any] | None] = queue.Queue()
        self.cancelled: set[str] = set()
        self.lock = threading.Lock()
        self.models: Models | None = None
        self.default: ModelSpec | None = None
        self.device = "cpu"
        self.peak_per_image = 0.0
        self.address_cap: int | None = None
        self.last_step: float | None = None  # monotonic time of the running batch's latest step; None when idle

    def load(self) -> None:
        import diffusers
        import torch
        import transformers

        from daemon.models.loading import ModelSpec
        from daemon.models.performance import Settings
        from daemon.worker.holding import Models

        diffusers.utils.logging.disable_progress_bar()
        transformers.utils.logging.disable_progress_bar()
        if self.spec.get("threads"):
            torch.set_num_threads(int(self.spec["threads"]))
        wanted = self.spec.get("device", "auto")
        self.device = "cuda" if wanted == "cuda" or (wanted == "auto" and torch.cuda.is_available()) else "cpu"
        self.models = Models(Path(self.spec["state_dir"]), self.device, self.out.send,
                             self.spec.get("pipeline_wrapper") or "", Settings.from_spec(self.spec.get("performance")),
                             self.warm_up)
        self.default = ModelSpec.from_message({**self.spec, "name": self.spec["model"]})
        started = time.monotonic()
        held = self.models.get(self.default)
        headroom = int(self.spec.get("memory_headroom_mb", 0))
        cap_address_space(headroom)
        self.address_cap = headroom * 2**20 if headroom > 0 else None
        self.out.send({"ev": "ready", "model_id": self.default.model_id, "weights_sha256": held.weights_sha256,
                       "path": str(held.path), "device": self.device, "dtype": held.dtype, "family": held.family,
                       "load_seconds": round(time.monotonic() - started, 3), "pid": os.getpid(),
                       "memory": self.memory()})

    def memory(self) -> dict[str, Any]:
        import psutil
        import torch

        figures: dict[str, Any] = {"rss": psutil.Process().memory_info().rss}
        if self.address_cap is not None:
            figures["capacity"] = self.address_cap
        elif self.device == "cpu":
            figures["capacity"] = psutil.virtual_memory().available
        if self.device == "cuda":
            figures.update(torch_allocated=torch.cuda.memory_allocated(),
                           torch_reserved=torch.cuda.memory_reserved(),
                           torch_peak=torch.cuda.max_memory_allocated())
            free, total = torch.cuda.mem_get_info()
            figures.update(device_free=free, device_total=total, capacity=total - torch.cuda.memory_allocated())
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

    def beat(self, period: float) -> None:
        """Heartbeats from their own thread: the daemon sees the process alive, and from `step_age`
        whether the running batch still advances (a wedged kernel or a deadlock stops the steps)."""
        while True:
            last = self.last_step
            self.out.send({"ev": "heartbeat", "step_age": None if last is None else round(time.monotonic() - last, 3)})
            time.sleep(period)

    def serve(self) -> None:
        threading.Thread(target=self.read_commands, name="commands", daemon=True).start()
        while (command := self.commands.get()) is not None:
            if command.get("op") == "shutdown":
                break
            if command.get("op") == "unload" and self.models is not None:
                self.models.unload(str(command.get("name", "")))
            if command.get("op") == "run":
                self.last_step = time.monotonic()
                try:
                    self.run(command)
                finally:
                    self.last_step = None

    def is_cancelled(self, job_id: str) -> bool:
        with self.lock:
            return job_id in self.cancelled

    def run(self, batch: dict[str, Any]) -> None:
        """Generate every item of the batch, `chunk` images per pipeline call.

        Out of memory, a chunk is split in halves and retried after freeing what can be freed;
        only a single image that does not fit fails the batch, with a message saying what to change.
        """
        batch_id = batch["batch_id"]
        items: list[dict[str, Any]] = batch["items"]
        chunk_size = max(1, int(batch.get("chunk", len(items))))
        pending = deque(items[i:i + chunk_size] for i in range(0, len(items), chunk_size))
        steps = int(batch["steps"])
        total = len(items) * steps
        done = 0
        self.peak_per_image = 0.0
        try:
            held = self._model_for(batch)
        except ModelError as exc:
            self._fail(batch_id, "load", str(exc))
            return
        except Exception as exc:
            traceback.print_exc(file=sys.stderr)
            self._fail(batch_id, "load", f"loading the model failed: {type(exc).__name__}: {exc}")
            return
        while pending:
            chunk = pending.popleft()
            active = [item for item in chunk if not self.is_cancelled(item["job_id"])]
            if not active:
                done += len(chunk) * steps
                continue
            try:
                report = functools.partial(self._progress, batch_id, done, len(active), total)
                images = self._generate(held, batch, active, steps, report)
            except Cancelled:
                done += len(chunk) * steps
                continue
            except Exception as exc:
                if not is_out_of_memory(exc):
                    traceback.print_exc(file=sys.stderr)
                    self._fail(batch_id, "error", f"{type(exc).__name__}: {exc}")
                    return
                self._free_memory()
                if len(active) > 1:
                    half = len(active) // 2
                    print(f"worker: out of memory with {len(active)} images of {batch['width']}x{batch['height']}; "
                          f"retrying as {half} + {len(active) - half}", file=sys.stderr)
                    self.out.send({"ev": "oom_split", "batch_id": batch_id, "images": len(active)})
                    pending.appendleft(active[half:])
                    pending.appendleft(active[:half])
                    continue
                self._fail(batch_id, "oom", f"out of memory generating one {batch['width']}x{batch['height']} image "
                           f"in {steps} steps on {self.device} ({type(exc).__name__}); reduce width and height, "
                           "or free memory on the device")
                return
            done += len(chunk) * steps
            for item, image in zip(active, images):
                if not self.is_cancelled(item["job_id"]):
                    self.out.send({"ev": "image", "batch_id": batch_id, "job_id": item["job_id"],
                                   "index": item["index"], "shape": list(image.shape)}, image.tobytes())
        with self.lock:
            cancelled = sorted({item["job_id"] for item in items} & self.cancelled)
            self.cancelled.difference_update(item["job_id"] for item in items)
        self.out.send({"ev": "done", "batch_id": batch_id, "cancelled": cancelled, "memory": self.memory(),
                       "peak": {"pixels": int(batch["width"]) * int(batch["height"]),
                                "bytes_per_image": int(self.peak_per_image)}})

    def warm_up(self, held: Held) -> bool:
        """One image at the spec's `warmup` size (the [defaults] one) so the first job does not pay
        for kernel selection, allocator growth or a compile; skipped when the family cannot take that size."""
        from daemon.models.families import FAMILIES

        size = self.spec.get("warmup") or {}
        width, height = int(size.get("width", 256)), int(size.get("height", 256))
        multiple = FAMILIES[held.family].size_multiple
        if width % multiple or height % multiple:
            print(f"worker: no warm-up for {held.spec.name}: {width}x{height} is not a multiple of {multiple}",
                  file=sys.stderr)
            return False
        item = {"job_id": "warm-up", "index": 0, "prompt": "warm-up", "seed": 0}
        batch = {"width": width, "height": height, "guidance": float(size.get("guidance", 7.5))}
        assert self.models is not None
        self._call_pipeline(held, batch, [item], self.models.settings.warmup_steps, lambda step: None)
        return True

    def _progress(self, batch_id: str, base: int, images: int, total: int, step: int) -> None:
        """Step `step` of a chunk of `images` images, `base` steps into the batch's `total`."""
        self.out.send({"ev": "progress", "batch_id": batch_id, "step": base + step * images, "steps": total})

    def _model_for(self, batch: dict[str, Any]) -> Held:
        """The held pipeline of the batch's `model` (loaded now if need be); the start-up one if it names none."""
        from daemon.models.loading import ModelSpec

        assert self.models is not None and self.default is not None
        fields = batch.get("model")
        return self.models.get(ModelSpec.from_message(fields) if isinstance(fields, dict) else self.default)

    def _generate(self, held: Held, batch: dict[str, Any], active: list[dict[str, Any]], steps: int,
                  report: Callable[[int], None]) -> Any:
        with PeakMemory(self.device) as peak:
            images = self._call_pipeline(held, batch, active, steps, report)
        per_image = peak.delta / len(active)
        self.peak_per_image = max(self.peak_per_image, per_image)
        return images

    def _call_pipeline(self, held: Held, batch: dict[str, Any], active: list[dict[str, Any]], steps: int,
                       report: Callable[[int], None]) -> Any:
        import torch

        def on_step(step: int) -> None:
            if all(self.is_cancelled(item["job_id"]) for item in active):
                raise Cancelled()
            self.last_step = time.monotonic()
            report(step + 1)

        width, height, guidance = int(batch["width"]), int(batch["height"]), float(batch["guidance"])
        generators = [torch.Generator(self.device).manual_seed(int(item["seed"])) for item in active]
        vae_for_call(held.pipe, held.plan, len(active), width * height)
        arguments = call_arguments(held.family, held.guidance, active, width, height, steps, guidance, generators,
                                   on_step)
        if held.compiles is None:
            result = held.pipe(**arguments)
        else:
            with held.compiles.call((len(active), width, height, held.guidance == "cfg" and guidance > 1),
                                    self.out.send):
                result = held.pipe(**arguments)
        return (result.images * 255).round().clip(0, 255).astype("uint8")

    def _free_memory(self) -> None:
        import gc

        import torch

        gc.collect()
        if self.device == "cuda":
            torch.cuda.empty_cache()

    def _fail(self, batch_id: str, kind: str, error: str) -> None:
        self.out.send({"ev": "failed", "batch_id": batch_id, "kind": kind, "error": error, "memory": self.memory()})


def main() -> int:
    # Ctrl-C in the daemon's terminal reaches the whole process group; the daemon decides.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    os.environ.update(OFFLINE)
    spec = json.loads(sys.argv[1])
    sys.path.extend(entry for entry in spec.get("sys_path", []) if entry not in sys.path)  # see launch.py
    protocol_stream = os.fdopen(os.dup(sys.stdout.fileno()), "wb")
    os.dup2(sys.stderr.fileno(), sys.stdout.fileno())
    out = SyncWriter(protocol_stream)
    worker = Worker(spec, out)
    threading.Thread(target=worker.beat, args=(float(spec.get("heartbeat_seconds", 2.0)),),
                     name="heartbeat", daemon=True).start()
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
