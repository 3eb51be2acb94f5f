"""Carry out a daemon.models.performance plan on a loaded pipeline (worker side, imports torch).

- `prepare`: SDPA attention, channels-last weights, `torch.compile` of the denoiser.
- `vae_for_call`: VAE slicing and tiling switched per call from the call's images and size.
- `ShapeCompiles`: which shapes a compiled denoiser has seen, and how many graphs each call made
  torch compile (dynamo's own count, not a guess): the worker reports a compile as a `model` event
  with action "compile" and a log line, and a recompile of a shape already seen as a warning.

CUDA-only effects (fp16 kernels, channels-last speed, the inductor/Triton compile, CUDA graphs
under "reduce-overhead") are untested here: the test machines have no GPU. bench/gpu_check.py
measures them on one.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from daemon.models.performance import FAST_ATTENTION, SLOW_ATTENTION, Plan, Settings, denoiser_name

Shape = tuple[int, int, int, bool]
"""(images in the call, width, height, classifier-free guidance on): what a static compile keys on."""


def use_sdpa(module: Any) -> list[str]:
    """Replace the classic attention processor by SDPA's in `module`; the processor classes it then runs."""
    from diffusers.models.attention_processor import AttnProcessor2_0

    processors = getattr(module, "attn_processors", None)
    if not processors:
        return []
    if any(type(p).__name__ == SLOW_ATTENTION for p in processors.values()):
        module.set_attn_processor({name: AttnProcessor2_0() if type(p).__name__ == SLOW_ATTENTION else p
                                   for name, p in processors.items()})
    return sorted({type(p).__name__ for p in module.attn_processors.values()})


def prepare(pipe: Any, family: str, plan: Plan, settings: Settings) -> dict[str, Any]:
    """Apply `plan` to `pipe` in place; what was done, for the `model` event."""
    import torch

    attention: set[str] = set()
    for name in (denoiser_name(family), "vae"):
        attention.update(use_sdpa(getattr(pipe, name, None)))
    for name in plan.channels_last:
        component = getattr(pipe, name, None)
        if component is not None:
            component.to(memory_format=torch.channels_last)
    done: dict[str, Any] = {**plan.summary(), "attention": sorted(attention)}
    slow = sorted(attention - set(FAST_ATTENTION))
    if slow:
        print(f"worker: attention processors {', '.join(slow)} are not SDPA's", file=sys.stderr)
    if plan.compile:
        compile_denoiser(getattr(pipe, denoiser_name(family)), settings)
        done["compile"] = {"backend": settings.compile_backend, "mode": settings.compile_mode}
    return done


def compile_denoiser(module: Any, settings: Settings) -> None:
    """`torch.compile` the module in place with static shapes: one graph per shape, reused; past
    `compile_max_shapes` shapes torch runs new ones uncompiled instead of compiling more."""
    import torch._dynamo.config as dynamo

    dynamo.recompile_limit = max(dynamo.recompile_limit, settings.compile_max_shapes)
    options: dict[str, Any] = {"backend": settings.compile_backend, "dynamic": False}
    if settings.compile_backend == "inductor" and settings.compile_mode != "default":
        options["mode"] = settings.compile_mode
    module.compile(**options)


def vae_for_call(pipe: Any, plan: Plan, images: int, pixels: int) -> tuple[bool, bool]:
    """Switch the VAE's slicing and tiling for a call of `images` images of `pixels` each; (sliced, tiled)."""
    vae = getattr(pipe, "vae", None)
    if vae is None or not hasattr(vae, "enable_slicing"):
        return False, False
    sliced, tiled = images > plan.slicing_above_batch, pixels > plan.tiling_above_pixels
    if sliced != getattr(vae, "use_slicing", False):
        vae.enable_slicing() if sliced else vae.disable_slicing()
    if tiled != getattr(vae, "use_tiling", False):
        vae.enable_tiling() if tiled else vae.disable_tiling()
    return sliced, tiled


def _graphs() -> int:
    from torch._dynamo.utils import counters

    return int(counters["stats"]["unique_graphs"])


@dataclass
class ShapeCompiles:
    """The shapes one compiled model has run, and the compiles its calls caused."""

    model: str
    max_shapes: int
    seen: set[Shape] = field(default_factory=set)
    compiles: int = 0

    @contextmanager
    def call(self, shape: Shape, send: Callable[[dict[str, Any]], None]) -> Iterator[None]:
        """Around one pipeline call of `shape`: reports the graphs it compiled (none for a shape seen)."""
        before, started = _graphs(), time.monotonic()
        yield
        graphs = _graphs() - before
        again = shape in self.seen
        self.seen.add(shape)
        if not graphs:
            return
        self.compiles += 1
        seconds = time.monotonic() - started
        images, width, height, cfg = shape
        what = f"{images}×{width}×{height}{' with guidance' if cfg else ''}"
        if again:
            print(f"worker: warning: {self.model} recompiled for {what}, a shape it had compiled "
                  f"({graphs} graphs); torch's guards failed", file=sys.stderr)
        else:
            print(f"worker: compiled {self.model} for {what}: {graphs} graphs, {seconds:.1f} s "
                  f"(shape {len(self.seen)} of at most {self.max_shapes})", file=sys.stderr)
        send({"ev": "model", "action": "compile", "name": self.model, "graphs": graphs,
              "shape": {"images": images, "width": width, "height": height, "guidance": cfg},
              "seconds": round(seconds, 3), "recompiled": again, "shapes": len(self.seen)})
