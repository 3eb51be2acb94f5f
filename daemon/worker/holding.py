"""The pipelines a worker holds, by model name: loaded on first use, dropped when the daemon says.

Which model to drop, and when, is the daemon's decision (it knows every worker's memory and the
queue); the worker only loads what a batch names and reports each load and unload as a `model`
event: name, family, weights hash, device, dtype, parameter bytes and the seconds it took. A load
also applies the `[performance]` plan (daemon.models.performance, daemon.worker.speed) and, when
the plan says so, runs the warm-up generation before the event (its seconds in `warmup_seconds`).
"""

from __future__ import annotations

import importlib
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from daemon.models.detect import detect
from daemon.models.families import FAMILIES
from daemon.models.loading import PREDICTION_FAMILIES, ModelSpec, load_pipeline, resolve, weights_sha256
from daemon.models.performance import Plan, Settings, plan
from daemon.models.shipped import borrowed_parts
from daemon.worker.speed import ShapeCompiles, prepare


@dataclass
class Held:
    spec: ModelSpec
    family: str
    pipe: Any  # a diffusers pipeline, possibly wrapped by worker.pipeline_wrapper (tests)
    path: Path
    weights_sha256: str
    device: str
    dtype: str
    bytes: int
    guidance: str  # "cfg", "embedded", or "none" (a distilled model without a guidance embedding)
    plan: Plan
    tuning: dict[str, Any]
    """What daemon.worker.speed.prepare did, plus the warm-up's seconds: reported in the load event."""
    compiles: ShapeCompiles | None = None
    prediction: str | None = None
    """What the UNet predicts (`epsilon`, `v_prediction`), as its scheduler was set; None for the
    transformer families."""

    def serves(self, spec: ModelSpec) -> bool:
        """Whether this pipeline is what `spec` asks for ("auto" family and dtype match what they became)."""
        return (spec.path, spec.config_dir, spec.scheduler, spec.prediction) == \
            (self.spec.path, self.spec.config_dir, self.spec.scheduler, self.spec.prediction) \
            and spec.family in ("auto", self.family, self.spec.family) \
            and spec.dtype in ("auto", self.dtype, self.spec.dtype)

    def event(self, action: str, seconds: float) -> dict[str, Any]:
        return {"ev": "model", "action": action, "name": self.spec.name, "family": self.family,
                "weights_sha256": self.weights_sha256, "device": self.device, "dtype": self.dtype,
                "bytes": self.bytes, "seconds": round(seconds, 3), "guidance": self.guidance,
                "path": str(self.path), **({"prediction": self.prediction} if self.prediction else {}),
                **(self.tuning if action == "load" else {})}


def parameter_bytes(pipe: Any) -> int:
    import torch

    return sum(p.numel() * p.element_size() for component in pipe.components.values()
               if isinstance(component, torch.nn.Module) for p in component.parameters())


def guidance_mode(family: str, pipe: Any) -> str:
    if FAMILIES[family].guidance == "embedded":
        return "embedded" if getattr(pipe.transformer.config, "guidance_embeds", False) else "none"
    return FAMILIES[family].guidance


WarmUp = Callable[[Held], bool]
"""Runs one short generation with a just-loaded model, or says why not and returns False
(daemon.worker.main.Worker.warm_up)."""


class Models:
    def __init__(self, state_dir: Path, device: str, send: Callable[[dict[str, Any]], None],
                 wrapper: str = "", settings: Settings | None = None, warm_up: WarmUp | None = None) -> None:
        self.state_dir = state_dir
        self.device = device
        self._send = send
        self._wrapper = wrapper
        self.settings = settings or Settings.from_spec()
        self._warm_up = warm_up
        self.held: dict[str, Held] = {}

    def get(self, spec: ModelSpec) -> Held:
        """The pipeline for `spec`, loaded now if not held (ModelError says why it cannot be)."""
        held = self.held.get(spec.name)
        if held is not None and held.serves(spec):
            return held
        if held is not None:  # same name, new settings (a config reload): the old one goes first
            self.unload(spec.name)
        started = time.monotonic()
        path = resolve(spec, self.state_dir)
        family = detect(path, spec.family)
        borrowed = borrowed_parts(path, spec.config_dir, family)
        digest = weights_sha256(path, borrowed)
        pipe = load_pipeline(path, family, spec, self.device, borrowed)
        prediction = pipe.scheduler.config.get("prediction_type") if family in PREDICTION_FAMILIES else None
        chosen = plan(self.settings, spec.name, family, self.device, spec.dtype)
        tuning = prepare(pipe, family, chosen, self.settings)
        if self._wrapper:
            module, _, name = self._wrapper.partition(":")
            pipe = getattr(importlib.import_module(module), name)(pipe)
        held = Held(spec, family, pipe, path, digest, self.device, chosen.dtype,
                    parameter_bytes(pipe), guidance_mode(family, pipe), chosen, tuning,
                    ShapeCompiles(spec.name, self.settings.compile_max_shapes) if chosen.compile else None,
                    prediction)
        loaded = time.monotonic() - started
        if chosen.warmup:
            self._warm(held)
        self.held[spec.name] = held
        self._send(held.event("load", loaded))
        return held

    def _warm(self, held: Held) -> None:
        """The warm-up generation; its seconds (or why it failed) go in the load event and the log."""
        if self._warm_up is None:
            return
        started = time.monotonic()
        try:
            ran = self._warm_up(held)
        except Exception as exc:  # the model loaded: a failed warm-up (out of memory at that size) costs only speed
            held.tuning["warmup_error"] = f"{type(exc).__name__}: {exc}"[:500]
            self._free()
            print(f"worker: warm-up of {held.spec.name} failed, jobs run without it: {held.tuning['warmup_error']}",
                  file=sys.stderr)
            return
        if ran:
            held.tuning["warmup_seconds"] = round(time.monotonic() - started, 3)
            print(f"worker: warmed up {held.spec.name} on {self.device} in {held.tuning['warmup_seconds']:.2f} s",
                  file=sys.stderr)

    def _free(self) -> None:
        import gc

        import torch

        gc.collect()
        if self.device == "cuda":
            torch.cuda.empty_cache()

    def unload(self, name: str) -> bool:
        """Drop model `name` and free its memory; False when it was not held."""
        held = self.held.pop(name, None)
        if held is None:
            return False
        started = time.monotonic()
        del held.pipe
        self._free()
        self._send(held.event("unload", time.monotonic() - started))
        return True
