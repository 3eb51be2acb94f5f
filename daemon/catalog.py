"""The configured models (`[model]` and `[models.NAME]`) and what the worker holds of them.

The daemon's side of the model registry: which names a job may ask for, the defaults each model
gives its jobs, what `model.list` shows, and the residency the dispatcher plans with (which models
the worker will hold once the commands already sent are done, least recently used first). What the
worker actually holds comes back as its `model` events (`worker_reported`): they set `loaded`, the
family it found and the weights' SHA-256, and each is audited as `model.load` / `model.unload`.

Paths are named only here, by an admin's config; a job names a model, never a path.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from daemon.config import MODELS, Config, ConfigError
from daemon.models.detect import family_from_keys
from daemon.models.errors import ModelError
from daemon.models.families import BUILT_IN, FAMILIES, FAMILY_NAMES, PIPELINE_FAMILIES, check_params
from daemon.models.performance import choose_dtype
from daemon.models.shipped import Shapes, borrowed_parts, header_shapes

log = logging.getLogger("sai.models")

DEFAULT_KEYS = ("width", "height", "steps", "guidance")
MIB = 2**20

Record = Callable[[None, str, str, dict[str, Any]], Awaitable[None]]
"""The audit append (daemon.assembly.ActionRecorder), called with None: the daemon acts."""
Publish = Callable[[str, dict[str, Any]], object]


@dataclass
class ModelEntry:
    """One configured model, and what is known of it at run time."""

    name: str
    path: str
    family: str
    config_dir: str
    scheduler: str
    dtype: str
    defaults: dict[str, Any]
    default: bool
    prediction: str = "auto"
    loaded: bool = False
    holders: set[str] = field(default_factory=set)
    """The workers (by name) that hold it now; `loaded` while any does."""
    device: str | None = None
    loaded_dtype: str | None = None
    weights_sha256: str | None = None
    found_family: str | None = None
    """The family the worker found at load (or the directory's model_index.json says)."""
    loaded_bytes: int | None = None
    """Parameter bytes the worker reported at its last load of this model."""
    size_bytes: int | None = None
    """Bytes of its weight files on disk (None until they exist: a built-in before its first build)."""
    parameters: int | None = None
    """Weights in its files, from their headers (EMA copies, which diffusers does not load, left out)."""
    guidance_mode: str | None = None
    """How a Flux model takes guidance, from its files at start, then from the worker's load:
    `embedded`, or `none` for a distilled one without a guidance embedding (FLUX.1 [schnell])."""

    @property
    def guidance(self) -> str | None:
        """`cfg`, `embedded` or `none` (a job's guidance is ignored); None: not known yet."""
        if self.guidance_mode:
            return self.guidance_mode
        family = FAMILIES.get(self.family_now)
        return family.guidance if family is not None and family.guidance != "embedded" else None

    @property
    def family_now(self) -> str:
        """The family its jobs are checked against: the one named in config, else the one found."""
        return self.family if self.family != "auto" else (self.found_family or "auto")

    def command(self) -> dict[str, Any]:
        """What every batch command tells the worker about its model."""
        return {"name": self.name, "path": self.path, "family": self.family, "config_dir": self.config_dir,
                "dtype": self.dtype, "scheduler": self.scheduler, "prediction": self.prediction}

    def need_bytes(self, device: str = "") -> int | None:
        """Memory it is expected to take once loaded: measured at an earlier load, else its weights at
        the dtype it loads in on `device` ("cpu", "cuda…"; "": not known), else its files' size. A
        float16 file loads in float32 on a CPU: twice its size."""
        if self.loaded_bytes:
            return self.loaded_bytes
        if self.parameters and device and self.family_now in FAMILY_NAMES:
            return self.parameters * DTYPE_BYTES[choose_dtype(self.dtype, self.family_now, device)]
        return self.size_bytes

    def view(self) -> dict[str, Any]:
        family = FAMILIES.get(self.family_now)
        return {"name": self.name, "family": self.family_now, "path": self.path, "default": self.default,
                "loaded": self.loaded, "device": self.device if self.loaded else None,
                "dtype": self.loaded_dtype if self.loaded else None, "weights_sha256": self.weights_sha256,
                "size_bytes": self.size_bytes, "defaults": dict(self.defaults), "guidance": self.guidance,
                "negative_prompt": family.negative_prompt if family else None,
                "size_multiple": family.size_multiple if family else None}


def family_problems(family: str, params: dict[str, Any]) -> list[tuple[str, str]]:
    """What a job's parameters break of its model family's limits: [(field, reason)]. A family not
    known yet (`auto` before the first load of a model whose directory does not say) is not judged:
    the worker's load decides it, and a mismatch fails the job with the reason."""
    if family not in FAMILY_NAMES:
        return []
    return check_params(family, params)


DTYPE_BYTES = {"float32": 4, "float16": 2, "bfloat16": 2}
EMA_PREFIX = "model_ema."
"""An LDM checkpoint's EMA copy of its UNet, which diffusers' single-file loader leaves unread."""


def _parameters(headers: Sequence[Shapes]) -> int:
    """The weights in .safetensors files, counted from their headers (shipped.header_shapes)."""
    return sum(math.prod(shape) for shapes in headers for key, shape in shapes.items()
               if not key.startswith(EMA_PREFIX))


FLUX_GUIDANCE_KEYS = ("guidance_in.in_layer.weight", "guidance_embedder.linear_1.weight")
"""A Flux transformer's guidance embedding, in Black Forest Labs' layout and in diffusers'."""


def _flux_guidance(files: Path, headers: Sequence[Shapes]) -> str | None:
    """Whether a Flux model's transformer embeds guidance (FLUX.1 [dev]) or has none ([schnell])."""
    if files.is_file():
        return "embedded" if any(key.endswith(FLUX_GUIDANCE_KEYS) for key in headers[0]) else "none"
    try:
        config = json.loads((files / "transformer" / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return "embedded" if config.get("guidance_embeds") else "none"


class DoesNotFit(Exception):
    """A model larger than all the memory the worker may give models: its jobs fail, the queue goes on."""


@dataclass
class Residency:
    """The models the worker will hold once the commands sent so far are done, oldest use first."""

    order: list[str] = field(default_factory=list)

    def use(self, name: str) -> None:
        if name in self.order:
            self.order.remove(name)
        self.order.append(name)

    def drop(self, name: str) -> None:
        if name in self.order:
            self.order.remove(name)


class ModelCatalog:
    def __init__(self, config: Config, state_dir: Path, *, record: Record, publish: Publish) -> None:
        """`record` audits loads and unloads; `publish(topic, data)` puts a `queue` event on the bus
        so clients (`sai models`, the console) see `loaded` change."""
        self.state_dir = state_dir
        self._record = record
        self._publish = publish
        self._tasks: set[asyncio.Task[None]] = set()
        self.budget = int(config.worker.models_memory_mb) * MIB or None
        """Bytes the loaded models may take together (None: what the device reports free)."""
        base = {key: config.defaults[key] for key in DEFAULT_KEYS}
        main = config.model
        self.default_name: str = main.name
        self.entries: dict[str, ModelEntry] = {
            main.name: ModelEntry(main.name, main.path, main.family, main.config_dir, main.scheduler, main.dtype,
                                  {**base, "scheduler": main.scheduler}, default=True, prediction=main.prediction)}
        for name, table in config.values[MODELS].items():
            defaults = {**base, **{k: table[k] for k in DEFAULT_KEYS if k in table},
                        "scheduler": table.get("scheduler", main.scheduler)}
            self.entries[name] = ModelEntry(
                name, table.get("path", ""), table.get("family", "auto"), table.get("config_dir", ""),
                defaults["scheduler"], table.get("dtype", "auto"), defaults, default=False,
                prediction=table.get("prediction", "auto"))
        self.origins = dict(config.origins)
        self.residency = Residency()
        for entry in self.entries.values():
            self._look_at_files(entry)

    # -- configuration -------------------------------------------------------------------------------

    def get(self, name: str | None) -> ModelEntry | None:
        return self.entries[self.default_name] if name is None else self.entries.get(name)

    @property
    def default(self) -> ModelEntry:
        return self.entries[self.default_name]

    def names(self) -> list[str]:
        return list(self.entries)

    def files_of(self, entry: ModelEntry) -> Path | None:
        """Where its weights are: the configured path, or a built-in's build directory (None before it)."""
        if entry.path:
            return Path(entry.path).expanduser()
        built = self.state_dir / "models" / entry.name
        return built if built.exists() else None

    def check_paths(self) -> None:
        """At start-up: every extra model's path exists, and nothing inside a model directory is a
        symlink leading out of it (an admin's path is trusted; what lies under it must not reach
        elsewhere). ConfigError naming the file that set the path and the key."""
        for entry in self.entries.values():
            if entry.default or not entry.path:
                continue  # the default model keeps its own checks in the worker (model.path)
            key = f"{MODELS}.{entry.name}.path"
            source = self.origins.get(key, "config")
            path = Path(entry.path).expanduser()
            if not path.exists():
                raise ConfigError(source, key, f"{entry.path} does not exist (a local diffusers directory or "
                                  ".safetensors file)")
            if path.is_dir():
                root = path.resolve()
                for inner in sorted(path.rglob("*")):
                    if inner.is_symlink() and not inner.resolve().is_relative_to(root):
                        raise ConfigError(source, key, f"{inner} is a symlink to {inner.resolve()}, outside "
                                          f"{entry.path}: a model's files must lie inside its path")
            elif path.suffix != ".safetensors":
                raise ConfigError(source, key, f"{entry.path} is neither a directory nor a .safetensors file")

    def _look_at_files(self, entry: ModelEntry) -> None:
        """Its weights' size on disk (a single file's with the config_dir weights it borrows) and its
        family before a load tells: a built-in's from the family
        table, an `auto` directory's from its model_index.json `_class_name` (PIPELINE_FAMILIES), an `auto`
        single file's from its header's tensor names; the worker's detection at load replaces it."""
        if entry.name in BUILT_IN and not entry.path:
            entry.found_family = entry.found_family or BUILT_IN[entry.name]
        files = self.files_of(entry)
        if files is None:
            return
        try:
            weights = [files] if files.is_file() else list(files.rglob("*.safetensors"))
            entry.size_bytes = sum(f.stat().st_size for f in weights) or None
            headers = [header_shapes(f) for f in weights]
            entry.parameters = _parameters(headers) or None
            index = files / "model_index.json"
            if entry.found_family is None and index.is_file():
                class_name = json.loads(index.read_text(encoding="utf-8")).get("_class_name", "")
                entry.found_family = PIPELINE_FAMILIES.get(str(class_name))
            elif entry.found_family is None and files.is_file():
                entry.found_family = family_from_keys(files, list(headers[0]))
            if entry.family_now == "flux":
                entry.guidance_mode = _flux_guidance(files, headers)
            if files.is_file() and entry.config_dir and entry.family_now != "auto":
                borrowed = borrowed_parts(files, entry.config_dir, entry.family_now).values()
                lent = [f for folder in borrowed for f in folder.glob("*.safetensors")]
                entry.size_bytes = (entry.size_bytes or 0) + sum(f.stat().st_size for f in lent)
                entry.parameters = (entry.parameters or 0) + _parameters([header_shapes(f) for f in lent]) or None
        except (OSError, ValueError, ModelError) as exc:
            log.warning("model %s: cannot read %s: %s", entry.name, files, exc)

    # -- what the worker holds ----------------------------------------------------------------------

    def worker_starting(self, residency: Residency | None = None, worker: str = "") -> None:
        """A new worker process is starting: it will load the default model (its start-up spec)
        before any batch, and holds nothing else. `residency`: that worker's plan (one per device;
        None: the catalog's own, for a daemon of one worker); `worker`: its name."""
        self.worker_gone(residency, worker)
        (residency if residency is not None else self.residency).use(self.default_name)

    def worker_started(self, info: dict[str, Any], worker: str = "") -> None:
        """The worker is ready: the default model is loaded (`info`: its `ready` report). Audited here
        unless its `model` event, which comes first, already was."""
        entry = self.default
        recorded = worker in entry.holders and entry.weights_sha256 == info.get("weights_sha256")
        self._loaded(entry, info.get("weights_sha256"), info.get("device"), info.get("dtype"),
                     info.get("family"), info.get("bytes"), worker)
        if not recorded:
            self._spawn(self._record(None, "model.load", entry.name, {
                "weights_sha256": entry.weights_sha256, "device": entry.device, "dtype": entry.loaded_dtype,
                "worker": worker or None, "worker_pid": info.get("pid")}))
        self._publish_change(entry, "load")

    def worker_gone(self, residency: Residency | None = None, worker: str = "") -> None:
        """The worker process ended: it holds nothing now (the others keep what they hold)."""
        for entry in self.entries.values():
            entry.holders.discard(worker)
            entry.loaded = bool(entry.holders)
        if residency is None:
            self.residency = Residency()
        else:
            residency.order.clear()

    def worker_reported(self, message: dict[str, Any], worker: str = "") -> None:
        """The worker's `model` event: a load or unload done. Recorded, audited, published."""
        entry = self.entries.get(str(message.get("name", "")))
        if entry is None:
            log.warning("worker reported a model this daemon does not know: %s", message.get("name"))
            return
        action = message.get("action")
        details = {k: message.get(k) for k in ("family", "weights_sha256", "device", "dtype", "bytes", "seconds")}
        details["worker"] = worker or None
        if message.get("prediction"):  # a UNet model's: what its scheduler was told the UNet predicts
            details["prediction"] = message["prediction"]
        if action == "load":
            again = worker in entry.holders and entry.weights_sha256 == message.get("weights_sha256")
            self._loaded(entry, message.get("weights_sha256"), message.get("device"), message.get("dtype"),
                         message.get("family"), message.get("bytes"), worker)
            if message.get("guidance") in ("embedded", "none"):
                entry.guidance_mode = str(message["guidance"])
            if again:  # the start-up load, already recorded from the worker's `ready`
                return
        elif action == "unload":
            entry.holders.discard(worker)
            entry.loaded = bool(entry.holders)
            details["weights_sha256"] = entry.weights_sha256
        else:
            return
        self._spawn(self._record(None, f"model.{action}", entry.name, details))
        self._publish_change(entry, str(action))

    def _loaded(self, entry: ModelEntry, digest: object, device: object, dtype: object, family: object,
                size: object, worker: str = "") -> None:
        entry.holders.add(worker)
        entry.loaded = True
        entry.weights_sha256 = str(digest) if digest else entry.weights_sha256
        entry.device = str(device) if device else None
        entry.loaded_dtype = str(dtype) if dtype else None
        if isinstance(family, str) and family in FAMILY_NAMES:
            entry.found_family = family
        if isinstance(size, int) and size > 0:
            entry.loaded_bytes = size
        if entry.size_bytes is None:  # a built-in built by this load; the others were looked at once, at start
            self._look_at_files(entry)

    def _publish_change(self, entry: ModelEntry, action: str) -> None:
        self._publish("queue", {"kind": f"model.{action}", "model": entry.view()})

    def _spawn(self, coro: Awaitable[None]) -> None:
        async def run() -> None:
            await coro

        task = asyncio.get_running_loop().create_task(run())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def close(self) -> None:
        """At shutdown, once the workers have stopped: each model a worker held is recorded as
        unloaded there (`model.unload`, reason `daemon stopping`, with its weights hash and the
        worker, so every audited load has its end), and the audit entries still being written are
        waited for before the log closes."""
        for entry in self.entries.values():
            for worker in sorted(entry.holders) if entry.loaded else []:
                self._spawn(self._record(None, "model.unload", entry.name, {
                    "weights_sha256": entry.weights_sha256, "device": entry.device, "dtype": entry.loaded_dtype,
                    "worker": worker or None, "reason": "daemon stopping"}))
            entry.holders.clear()
            entry.loaded = False
        self.residency = Residency()
        await self.drain()

    async def drain(self) -> None:
        """Wait for the `model.load` / `model.unload` audit entries still being written."""
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)

    # -- planning loads (the dispatcher) -----------------------------------------------------------

    def misfit(self, name: str, free: int | None, residency: Residency | None = None, device: str = "") -> str | None:
        """Why model `name` can never be loaded on a worker of `device` that last reported `free`
        bytes it can still use while holding what `residency` plans, or None (also when not known)."""
        residency = residency if residency is not None else self.residency
        if name in residency.order or name == self.default_name:  # held, or loaded by every worker at start
            return None
        need = self.entries[name].need_bytes(device)
        held = sum(self.entries[other].need_bytes(device) or 0 for other in residency.order)
        total = self.budget if self.budget is not None else (None if free is None else free + held)
        if need is None or total is None or need <= total:
            return None
        where = ("worker.models_memory_mb" if self.budget is not None else "the memory its device has free")
        return (f"model {name} needs about {need / MIB:.0f} MiB, more than the {total / MIB:.0f} MiB "
                f"the worker can give models ({where}); it cannot be loaded")

    def plan_load(self, name: str, free: int | None, residency: Residency | None = None,
                  device: str = "") -> list[str]:
        """The models to unload, least recently used first, before `name` runs; `free` is what the
        worker last reported it can still use (None: not known); `residency`: that worker's plan
        (None: the catalog's own); `device`: the worker's ("cpu", "cuda:1"), which sets the dtype
        the weights load in. DoesNotFit when `name` alone is larger than all the memory models may
        take there."""
        residency = residency if residency is not None else self.residency
        entry = self.entries[name]
        if name in residency.order:
            residency.use(name)
            return []
        need = entry.need_bytes(device)
        held = {other: self.entries[other].need_bytes(device) or 0 for other in residency.order}
        total = self.budget if self.budget is not None else (None if free is None else free + sum(held.values()))
        if need is None or total is None:
            residency.use(name)
            return []
        reason = self.misfit(name, free, residency, device)
        if reason:
            raise DoesNotFit(reason)
        unload = []
        for other in list(residency.order):
            if sum(held[o] for o in residency.order) + need <= total:
                break
            unload.append(other)
            residency.drop(other)
        residency.use(name)
        return unload

    def model_list(self) -> dict[str, Any]:
        return {"models": [entry.view() for entry in self.entries.values()]}
