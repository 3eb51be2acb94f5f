"""Resolve a configured model to local files and load it with its family's pipeline (worker side).

Nothing is fetched: directories load with `local_files_only=True`, single files always get a
local `config=` tree (the model's `config_dir`, else the shipped one the file's shapes fit:
daemon.models.shipped), and the worker runs with the hub offline. Pickled weights are refused
because unpickling runs code; a symlink leading out of a model's directory is refused because the
admin configured that directory, not wherever the link points.
"""

from __future__ import annotations

import hashlib
import importlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from daemon.models.builders import BUILT_IN, build
from daemon.models.detect import file_keys
from daemon.models.errors import ModelError
from daemon.models.families import FAMILIES, Family
from daemon.models.performance import choose_dtype
from daemon.models.pixart_layout import load_transformer
from daemon.models.shipped import (
    ShippedTree,
    absent_components,
    choose,
    denoiser_folder,
    header_shapes,
)

if TYPE_CHECKING:
    from diffusers import DiffusionPipeline

__all__ = ["ModelError", "ModelSpec", "load_pipeline", "resolve", "weights_sha256"]

PICKLED_SUFFIXES = (".ckpt", ".bin", ".pt", ".pth", ".pkl")
SCHEDULER_CLASSES = {"euler": "EulerDiscreteScheduler", "ddim": "DDIMScheduler", "dpm": "DPMSolverMultistepScheduler"}
FLOW_SCHEDULERS = {"euler": "FlowMatchEulerDiscreteScheduler"}
PREDICTION_FAMILIES = ("sd15", "sd2", "sdxl")
"""The UNet families, whose scheduler may be told what the UNet predicts (`prediction`)."""
V_PREDICTION_MARK, ZERO_SNR_MARK = "v_pred", "ztsnr"
"""Empty tensors some single files carry to say they were trained for v-prediction (SDXL
v-prediction fine-tunes) and with zero terminal SNR, as ComfyUI reads them."""


@dataclass(frozen=True)
class ModelSpec:
    name: str
    path: str
    config_dir: str = ""
    family: str = "auto"
    dtype: str = "auto"
    scheduler: str = "euler"
    prediction: str = "auto"

    @property
    def model_id(self) -> str:
        return self.name if self.name in BUILT_IN and not self.path else Path(self.path or self.name).name

    @classmethod
    def from_message(cls, fields: dict[str, Any]) -> ModelSpec:
        """From a batch command's `model` object, or the worker's start-up spec (daemon.worker.main)."""
        return cls(str(fields["name"]), str(fields.get("path") or ""), str(fields.get("config_dir") or ""),
                   str(fields.get("family") or "auto"), str(fields.get("dtype") or "auto"),
                   str(fields.get("scheduler") or "euler"), str(fields.get("prediction") or "auto"))


def refuse_outside_links(root: Path) -> None:
    """Refuse any symlink under directory `root` whose target lies outside it, naming the link."""
    base = root.resolve()
    for folder, dirs, files in os.walk(root, followlinks=False):
        for name in dirs + files:
            entry = Path(folder) / name
            if entry.is_symlink():
                target = entry.resolve()
                if not target.is_relative_to(base):
                    raise ModelError(f"{entry}: a symlink to {target}, outside the configured directory {root}; "
                                     "links out of a model directory are refused (copy the file in instead)")


def _refuse_pickles(path: Path) -> None:
    # Pickled files beside .safetensors are never read (loading asks for safetensors only); a folder
    # whose only weights are pickled is refused, naming the file, rather than failing vaguely later.
    unsafe = [p for p in sorted(path.rglob("*")) if p.suffix in PICKLED_SUFFIXES
              and not any(p.parent.glob("*.safetensors"))]
    if unsafe:
        raise ModelError(f"{unsafe[0]}: pickled weights are refused because loading them can run code, and "
                         f"{unsafe[0].parent} has no .safetensors to use instead; convert the model to .safetensors")


def _check_components(path: Path) -> None:
    """Every component model_index.json lists must be a local folder: a missing one would send
    diffusers to the hub, which offline is a failure far from its cause."""
    index = json.loads((path / "model_index.json").read_text())
    for name, value in index.items():
        if name.startswith("_") or not isinstance(value, list) or value[0] is None:
            continue
        if not (path / name).is_dir():
            raise ModelError(f"{path / 'model_index.json'}: component {name!r} ({value[-1]}) has no folder "
                             f"{path / name}; loading it would need the network, which is off")


def resolve(spec: ModelSpec, state_dir: Path) -> Path:
    """The local path to load: a built-in model (built on first use) or the configured one, checked."""
    if spec.name in BUILT_IN and not spec.path:
        return build(spec.name, state_dir / "models" / spec.name)
    path = Path(spec.path or spec.name).expanduser()
    if not path.exists():
        raise ModelError(f"model path {path} does not exist (set the model's path to a local diffusers "
                         f"directory or .safetensors file, or use a built-in: {', '.join(BUILT_IN)})")
    if path.is_file():
        if path.suffix in PICKLED_SUFFIXES:
            raise ModelError(f"{path}: pickled weights ({path.suffix}) are refused because loading them "
                             "can run code; convert the model to .safetensors")
        if path.suffix != ".safetensors":
            raise ModelError(f"{path}: expected a diffusers directory or a .safetensors file")
        return path
    if not (path / "model_index.json").is_file():
        raise ModelError(f"{path} is not a diffusers directory (no model_index.json)")
    refuse_outside_links(path)
    _refuse_pickles(path)
    _check_components(path)
    return path


def weights_sha256(path: Path, borrowed: dict[str, Path] | None = None) -> str:
    """SHA-256 over every safetensors file (relative name and content), in a stable order; for a
    single file, also over the config_dir folders whose weights it borrows (shipped.borrowed_parts)."""
    if path.is_file():
        files = [(path.name, path)] + [(f"{name}/{file.name}", file)
                                       for name, folder in sorted((borrowed or {}).items())
                                       for file in sorted(folder.glob("*.safetensors"))]
    else:
        files = [(str(file.relative_to(path)), file) for file in sorted(path.rglob("*.safetensors"))]
    outer = hashlib.sha256()
    for name, file in files:
        inner = hashlib.sha256()
        with file.open("rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                inner.update(block)
        outer.update(name.encode() + b"\0" + inner.digest())
    return outer.hexdigest()


def single_file_config(path: Path, spec: ModelSpec, family: Family) -> ShippedTree:
    """The config tree a single file loads with: the model's config_dir, else the shipped one it fits."""
    if spec.config_dir:
        tree = Path(spec.config_dir).expanduser()
        if not (tree / "model_index.json").is_file():
            raise ModelError(f"{path}: config_dir {tree} is not a diffusers config tree (no model_index.json)")
        refuse_outside_links(tree)
        _refuse_pickles(tree)
        return ShippedTree(tree, denoiser_folder(tree), tuple(absent_components(tree)))
    return choose(path, family.name, header_shapes(path))


def torch_dtype(name: str, family: Family, device: str) -> Any:
    import torch

    return getattr(torch, choose_dtype(name, family.name, device))


def load_pipeline(path: Path, family_name: str, spec: ModelSpec, device: str,
                  borrowed: dict[str, Path] | None = None) -> DiffusionPipeline:
    """Load `path` (resolved) as a `family_name` pipeline on `device`, with the spec's dtype and scheduler.
    `borrowed`: what a single file takes from its config_dir (shipped.borrowed_parts), found once by
    the caller, who also hashes it."""
    import diffusers

    family = FAMILIES[family_name]
    pipeline_class = getattr(diffusers, family.pipeline_class)
    dtype = torch_dtype(spec.dtype, family, device)
    extra: dict[str, Any] = {}
    if family.name in ("sd15", "sd2"):
        extra = {"safety_checker": None, "requires_safety_checker": False}
    elif family.name == "sdxl":
        extra = {"add_watermarker": False}  # outputs are marked by the daemon's own pipeline
    try:
        if path.is_file() and family.name == "pixart":
            pipe = _pixart_single_file(path, spec, pipeline_class, dtype, borrowed or {})
        elif path.is_file():
            tree = single_file_config(path, spec, family)
            extra.update(dict.fromkeys(tree.left_out))
            extra.update(_load_borrowed(path, spec.config_dir, borrowed or {}, dtype))
            if not tree.default_denoiser:
                extra[tree.component] = _denoiser_variant(path, tree, dtype)
            if tree.variant_scheduler:
                extra["scheduler"] = _variant_scheduler(tree.path, tree.variant_scheduler)
            pipe = pipeline_class.from_single_file(str(path), config=str(tree.path), local_files_only=True,
                                                   torch_dtype=dtype, **extra)
            _refuse_missing_weights(path, pipe)
            _inference_mode(pipe)
        else:
            pipe = pipeline_class.from_pretrained(str(path), local_files_only=True, use_safetensors=True,
                                                  torch_dtype=dtype, **extra)
    except ModelError:
        raise
    except Exception as exc:  # diffusers and transformers raise many types; each means this model cannot load
        what = "single file" if path.is_file() else "directory"
        raise ModelError(f"{path}: loading this {family.label} {what} failed: {type(exc).__name__}: {exc}") from exc
    _set_scheduler(pipe, family, spec.scheduler, path)
    _set_prediction(pipe, family, spec.prediction, path)
    pipe.set_progress_bar_config(disable=True)
    return pipe.to(device)


def _pixart_single_file(path: Path, spec: ModelSpec, pipeline_class: Any, dtype: Any,
                        borrowed: dict[str, Path]) -> DiffusionPipeline:
    """A PixArt transformer file with its config_dir's T5, VAE, tokenizer and scheduler: diffusers
    has no single-file loader for PixArt, so the transformer is read by daemon.models.pixart_layout."""
    tree = single_file_config(path, spec, FAMILIES["pixart"])
    parts = _load_borrowed(path, spec.config_dir, borrowed, dtype)
    parts["transformer"] = load_transformer(path, tree.path / tree.denoiser, dtype)
    pipe: DiffusionPipeline = pipeline_class.from_pretrained(str(tree.path), local_files_only=True,
                                                             use_safetensors=True, torch_dtype=dtype, **parts)
    return pipe


def _load_borrowed(path: Path, config_dir: str, parts: dict[str, Path], dtype: Any) -> dict[str, Any]:
    """The components the file lacks, from the config_dir's own weights, each with the class its
    model_index.json names (diffusers' or transformers' only)."""
    if not parts:
        return {}
    index = json.loads((Path(config_dir).expanduser() / "model_index.json").read_text())
    loaded: dict[str, Any] = {}
    for name, folder in parts.items():
        library, class_name = index[name]
        if library not in ("diffusers", "transformers"):
            raise ModelError(f"{path}: config_dir's model_index.json gives {name} the library {library!r}; "
                             "only diffusers and transformers components are loaded")
        dtype_argument = "dtype" if library == "transformers" else "torch_dtype"
        loaded[name] = getattr(importlib.import_module(library), class_name).from_pretrained(
            str(folder), local_files_only=True, use_safetensors=True, **{dtype_argument: dtype})
    return loaded


def _denoiser_variant(path: Path, tree: ShippedTree, dtype: Any) -> Any:
    """The file's UNet or transformer, built with the variant's config (SD 3.5 Large, Medium)."""
    import diffusers

    config = json.loads((tree.path / tree.denoiser / "config.json").read_text())
    denoiser_class = getattr(diffusers, str(config["_class_name"]))
    return denoiser_class.from_single_file(str(path), config=str(tree.path), subfolder=tree.denoiser,
                                           local_files_only=True, torch_dtype=dtype)


def _variant_scheduler(tree: Path, folder: str) -> Any:
    import diffusers

    config = json.loads((tree / folder / "scheduler_config.json").read_text())
    return getattr(diffusers, str(config["_class_name"])).from_pretrained(str(tree), subfolder=folder)


def _set_scheduler(pipe: DiffusionPipeline, family: Family, name: str, path: Path) -> None:
    import diffusers

    if name in ("", "auto"):
        return
    if name not in family.schedulers:
        raise ModelError(f"{path}: {family.label} models run with scheduler {', '.join(family.schedulers)}, "
                         f"not {name}")
    classes = FLOW_SCHEDULERS if family.scheduler_class.startswith("FlowMatch") else SCHEDULER_CLASSES
    wanted = getattr(diffusers, classes[name])
    if not isinstance(pipe.scheduler, wanted):
        pipe.scheduler = wanted.from_config(pipe.scheduler.config)


def prediction_problem(family: str, wanted: str) -> str | None:
    """Why a configured `prediction` cannot apply to a `family` model (the worker's load and
    `sai doctor` say the same), or None."""
    if wanted == "auto" or family in PREDICTION_FAMILIES:
        return None
    return (f"prediction = {wanted!r} is for UNet models ({', '.join(PREDICTION_FAMILIES)}); this is a {family} "
            "model, which sets its own")


def _set_prediction(pipe: DiffusionPipeline, family: Family, wanted: str, path: Path) -> None:
    """What the UNet predicts, when the config names it or a single file is marked; otherwise the
    scheduler config's (the directory's, or the shipped tree's)."""
    if problem := prediction_problem(family.name, wanted):
        raise ModelError(f"{path}: {problem}: remove the model's prediction")
    if family.name not in PREDICTION_FAMILIES:
        return
    changes: dict[str, Any] = {}
    if wanted != "auto":
        changes["prediction_type"] = wanted
    elif path.is_file():
        keys = set(file_keys(path))
        if V_PREDICTION_MARK in keys:
            changes["prediction_type"] = "v_prediction"
            if ZERO_SNR_MARK in keys:
                changes.update(rescale_betas_zero_snr=True, timestep_spacing="trailing")
    if changes:
        pipe.scheduler = type(pipe.scheduler).from_config({**pipe.scheduler.config, **changes})


def _inference_mode(pipe: DiffusionPipeline) -> None:
    """diffusers 0.42 leaves a T5 it builds from a single file (SD3's, Flux's) in training mode: its
    dropout would make each image differ from the same seed's, and from the directory form's."""
    import torch

    for component in pipe.components.values():
        if isinstance(component, torch.nn.Module):
            component.eval()


def _refuse_missing_weights(path: Path, pipe: DiffusionPipeline) -> None:
    """diffusers leaves weights a single file lacks uninitialised (meta) or silently random: a
    component still on the meta device means the file and the config tree do not match."""
    import torch

    for name, component in pipe.components.items():
        if isinstance(component, torch.nn.Module) and any(p.device.type == "meta" for p in component.parameters()):
            raise ModelError(f"{path}: the file has no weights for {name} in the shape the config tree gives; "
                             "set config_dir to a config tree matching this checkpoint")
