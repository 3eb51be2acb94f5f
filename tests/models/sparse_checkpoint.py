"""A real-sized single-file checkpoint of zeros, written as a sparse file (run in a child process:
`python -m tests.models.sparse_checkpoint OUTDIR` writes one of each published model;
`... flux-width TINY_FLUX CONFIG_DIR FILE` a Flux transformer at FLUX.1's width: write_flux_width).

The tensor names and shapes are what daemon.models.original writes for a pipeline built (on the
meta device, no memory) from config tree TREE; the data is float16 zeros the file system never
stores. It stands for a published checkpoint that cannot be downloaded here: same layout, same
shapes, so diffusers' single-file loader and the shipped config tree meet real sizes.
"""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path
from types import SimpleNamespace
from typing import Any


def meta_component(tree: Path, folder: str) -> Any:
    import diffusers
    import torch
    import transformers

    config = json.loads((tree / folder / "config.json").read_text())
    with torch.device("meta"):
        if "_class_name" in config:
            return getattr(diffusers, config["_class_name"]).from_config(config)
        model_class = getattr(transformers, config["architectures"][0])
        return model_class(model_class.config_class.from_dict(config))


PUBLISHED = {"sd15": ("sd15", ""), "sd2": ("sd2", ""), "sdxl": ("sdxl", ""), "sd3-medium": ("sd3", ""),
             "sd3.5-large": ("sd3", "transformer-sd3.5-large"), "sd3.5-medium": ("sd3", "transformer-sd3.5-medium"),
             "sd3-medium-t5": ("sd3", ""), "flux1-dev": ("flux", ""), "flux1-schnell": ("flux", "transformer-schnell")}
"""Name → (family, denoiser variant) of each published model whose tree the package ships."""
WITHOUT_T5 = ("sd3-medium", "sd3.5-large", "sd3.5-medium")
"""SD3 files as most are published: CLIP-L, CLIP-G and the VAE, no T5-XXL."""


def write(family: str, tree: Path, target: Path, denoiser: str = "", leave_out: tuple[str, ...] = ()) -> Path:
    """`denoiser`: a variant's folder in the tree (`transformer-sd3.5-large`) instead of the default;
    `leave_out`: components the file has no weights for."""
    from daemon.models.original import original_state_dict

    folders = [p.name for p in tree.iterdir()
               if (p / "config.json").is_file() and "-" not in p.name and p.name not in leave_out]
    pipe = SimpleNamespace(**{name: meta_component(tree, name) for name in folders})
    if denoiser:
        setattr(pipe, denoiser.split("-")[0], meta_component(tree, denoiser))
    shapes = {key: tuple(tensor.shape) for key, tensor in original_state_dict(family, pipe).items()}
    return write_shapes(target, shapes)


def write_shapes(target: Path, shapes: dict[str, tuple[int, ...]]) -> Path:
    """A .safetensors file of float16 zeros with these tensors, sparse on disk (no torch needed)."""
    header: dict[str, Any] = {"__metadata__": {"format": "pt"}}
    offset = 0
    for key, shape in sorted(shapes.items()):
        size = 2 * math.prod(shape)
        header[key] = {"dtype": "F16", "shape": list(shape), "data_offsets": [offset, offset + size]}
        offset += size
    raw = json.dumps(header).encode()
    raw += b" " * (-len(raw) % 8)
    with target.open("wb") as out:
        out.write(len(raw).to_bytes(8, "little") + raw)
        out.truncate(8 + len(raw) + offset)
    return target


FLUX_WIDTH = {"num_attention_heads": 24, "attention_head_dim": 128, "axes_dims_rope": [16, 56, 56]}
"""FLUX.1's transformer width: 24 heads of 128, the 3072 that diffusers' converter of BFL's layout assumes."""


def write_flux_width(tiny: Path, config_dir: Path, target: Path) -> Path:
    """A Flux file as Black Forest Labs publish it, the transformer alone in their layout, at FLUX.1's
    width with one double and one single block; and `config_dir`, the built tiny-flux model (`tiny`)
    with that transformer's config and no transformer weights: its encoders and VAE are what the
    file borrows."""
    import shutil

    from daemon.models.original import flux_transformer

    shutil.copytree(tiny, config_dir, ignore=shutil.ignore_patterns("*.lock"))
    for weights in (config_dir / "transformer").glob("*.safetensors"):
        weights.unlink()
    config_file = config_dir / "transformer" / "config.json"
    config_file.write_text(json.dumps({**json.loads(config_file.read_text()), **FLUX_WIDTH}, indent=2))
    transformer = meta_component(config_dir, "transformer")
    return write_shapes(target, {key: tuple(tensor.shape) for key, tensor in flux_transformer(transformer).items()})


def write_published(configs: Path, out: Path) -> dict[str, Path]:
    """Every published model of PUBLISHED, as `out/NAME.safetensors`."""
    return {name: write(family, configs / family, out / f"{name}.safetensors", denoiser,
                        ("text_encoder_3",) if name in WITHOUT_T5 else ())
            for name, (family, denoiser) in PUBLISHED.items()}


if __name__ == "__main__":
    from daemon.models.shipped import CONFIGS

    if sys.argv[1] == "flux-width":
        print(write_flux_width(*(Path(arg) for arg in sys.argv[2:5])))
        raise SystemExit(0)
    for name, path in write_published(CONFIGS, Path(sys.argv[1])).items():
        print(name, path)
