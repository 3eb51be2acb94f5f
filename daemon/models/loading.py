"""Resolve the configured model to a local diffusers pipeline (worker side).

Nothing is fetched: every load is `local_files_only=True` with the hub offline, and pickled
weights are refused because unpickling runs code.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from daemon.models.builders import SHAPES, build

PICKLED_SUFFIXES = (".ckpt", ".bin", ".pt", ".pth", ".pkl")


class ModelError(Exception):
    """The configured model cannot be used; the message says what to change."""


@dataclass(frozen=True)
class ModelSpec:
    name: str
    path: str
    config_dir: str = ""

    @property
    def model_id(self) -> str:
        return self.name if self.name in SHAPES else Path(self.path or self.name).name


def resolve(spec: ModelSpec, state_dir: Path) -> Path:
    """The local path to load: a built-in model (built on first use) or the configured one."""
    if spec.name in SHAPES and not spec.path:
        return build(spec.name, state_dir / "models" / spec.name)
    path = Path(spec.path or spec.name).expanduser()
    if not path.exists():
        raise ModelError(f"model path {path} does not exist (set model.path to a local diffusers "
                         "directory or .safetensors file, or model.name to tiny)")
    if path.is_file():
        if path.suffix in PICKLED_SUFFIXES:
            raise ModelError(f"{path}: pickled weights ({path.suffix}) are refused because loading them "
                             "can run code; convert the model to .safetensors")
        if path.suffix != ".safetensors":
            raise ModelError(f"{path}: expected a diffusers directory or a .safetensors file")
        return path
    if not (path / "model_index.json").is_file():
        raise ModelError(f"{path} is not a diffusers directory (no model_index.json)")
    # Pickled files beside .safetensors are never read (loading asks for safetensors only); a folder
    # whose only weights are pickled is refused here, naming the file, rather than failing vaguely later.
    unsafe = [p for p in sorted(path.rglob("*")) if p.suffix in PICKLED_SUFFIXES
              and not any(p.parent.glob("*.safetensors"))]
    if unsafe:
        raise ModelError(f"{unsafe[0]}: pickled weights are refused because loading them can run code, and "
                         f"{unsafe[0].parent} has no .safetensors to use instead; convert the model to .safetensors")
    return path


def weights_sha256(path: Path) -> str:
    """SHA-256 over every safetensors file (relative name and content), in a stable order."""
    files = [path] if path.is_file() else sorted(path.rglob("*.safetensors"))
    outer = hashlib.sha256()
    for file in files:
        inner = hashlib.sha256()
        with file.open("rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                inner.update(block)
        name = file.name if path.is_file() else str(file.relative_to(path))
        outer.update(name.encode() + b"\0" + inner.digest())
    return outer.hexdigest()


def load_pipeline(path: Path, spec: ModelSpec, device: str, dtype: Any, scheduler: str) -> Any:
    from diffusers import DDIMScheduler, DPMSolverMultistepScheduler, EulerDiscreteScheduler, StableDiffusionPipeline

    if path.is_file():
        if not spec.config_dir:
            raise ModelError(f"{path}: a single-file model needs model.config_dir, a local diffusers "
                             "directory with the matching component configs")
        pipe = StableDiffusionPipeline.from_single_file(
            str(path), config=spec.config_dir, local_files_only=True, torch_dtype=dtype)
    else:
        pipe = StableDiffusionPipeline.from_pretrained(
            str(path), local_files_only=True, use_safetensors=True, torch_dtype=dtype,
            safety_checker=None, requires_safety_checker=False)
    schedulers = {"euler": EulerDiscreteScheduler, "ddim": DDIMScheduler, "dpm": DPMSolverMultistepScheduler}
    if not isinstance(pipe.scheduler, schedulers[scheduler]):
        pipe.scheduler = schedulers[scheduler].from_config(pipe.scheduler.config)
    pipe.set_progress_bar_config(disable=True)
    return pipe.to(device)
