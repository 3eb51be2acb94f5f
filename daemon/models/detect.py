"""Which family a model is: as configured, else from model_index.json, else from a single file's keys.

A single `.safetensors` file is judged by the names in its header (safetensors' `safe_open`, no
tensor is read), in the original (non-diffusers) layouts the families are published in. No torch.
"""

from __future__ import annotations

import json
from pathlib import Path

from daemon.models.errors import ModelError
from daemon.models.families import FAMILY_NAMES, PIPELINE_FAMILIES

KEY_MARKS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("flux", ("double_blocks.0.img_attn.norm.key_norm.scale",)),
    ("sd3", ("joint_blocks.0.context_block.adaLN_modulation.1.bias",)),
    ("pixart", ("y_embedder.y_proj.fc1.weight",)),
    ("sdxl", ("conditioner.embedders.1.model.", "model.diffusion_model.label_emb.0.0.weight")),
    ("sd2", ("cond_stage_model.model.token_embedding.weight",)),
    ("sd15", ("cond_stage_model.transformer.text_model.", "model.diffusion_model.input_blocks.0.0.weight")),
)
"""Family → key fragments found only in its original layout; the first family with a match wins
(a Flux or SD3 file may carry an SD-like VAE; SDXL's UNet has SD's input blocks)."""

COMPATIBLE = {frozenset({"sd15", "sd2"})}
"""Families one pipeline class serves, so a configured one may name either."""


def file_keys(path: Path) -> list[str]:
    """The tensor names in a .safetensors file's header."""
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="numpy") as handle:
            return list(handle.keys())
    except Exception as exc:  # safetensors raises its own error types for a bad header
        raise ModelError(f"{path}: not a readable .safetensors file ({exc})") from exc


def family_from_keys(path: Path, keys: list[str]) -> str:
    for name, marks in KEY_MARKS:
        if any(mark in key for key in keys for mark in marks):
            return name
    sample = ", ".join(sorted(keys)[:3]) or "no tensors at all"
    raise ModelError(f"{path}: no known model family in its weights (found {len(keys)} tensors such as {sample}); "
                     f"set family to one of {', '.join(FAMILY_NAMES)} if this is a model in the diffusers layout")


def family_from_index(path: Path) -> str:
    """The family model_index.json names (SD 2.x told from SD 1.x by its text encoder's width)."""
    index_file = path / "model_index.json"
    try:
        index = json.loads(index_file.read_text())
        class_name = str(index["_class_name"])
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise ModelError(f"{index_file}: unreadable model index ({exc})") from exc
    found = PIPELINE_FAMILIES.get(class_name)
    if found is None:
        raise ModelError(f"{index_file}: pipeline {class_name} is no supported family "
                         f"(supported: {', '.join(sorted(PIPELINE_FAMILIES))})")
    if found == "sd15":
        try:
            text = json.loads((path / "text_encoder" / "config.json").read_text())
            if int(text.get("hidden_size", 0)) == 1024:
                return "sd2"
        except (OSError, ValueError):
            pass
    return found


def detect(path: Path, configured: str = "auto") -> str:
    """The family of the model at `path` (a diffusers directory or a .safetensors file).

    A configured family is checked against what the files say where they say it: a mismatch is an
    error naming both, so a wrong `family` fails at load instead of producing garbage."""
    if configured not in ("auto", *FAMILY_NAMES):
        raise ModelError(f"{path}: unknown model family {configured!r} (known: auto, {', '.join(FAMILY_NAMES)})")
    if path.is_dir():
        found = family_from_index(path)
        source = f"{path / 'model_index.json'} names a {found} pipeline"
    else:
        keys = file_keys(path)
        try:
            found = family_from_keys(path, keys)
        except ModelError:
            if configured != "auto":
                return configured  # a layout the marks do not know: the admin's word stands
            raise
        source = f"{path}'s weights are in the {found} layout"
    if configured in ("auto", found) or frozenset({configured, found}) in COMPATIBLE:
        return found if configured == "auto" else configured
    raise ModelError(f"{path}: configured as family {configured}, but {source}; fix the model's family "
                     "(or set it to auto)")
