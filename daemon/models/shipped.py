"""The config trees the package ships for single-file loads, and which one fits a given file.

A single `.safetensors` file carries weights only. daemon/models/configs/ holds, per family, the
tree of the real published model (`sd15`, `sd2`, `sdxl`, `sd3`, `flux`: daemon.models.published) and
the tree of the built-in tiny model (`tiny-<family>`). The file's own tensor shapes (read from its
header, no tensor loaded) pick the tree, and the denoiser variant (SD3 Medium, 3.5 Large, 3.5 Medium;
FLUX.1 dev, schnell). A file no shipped tree fits, or one carrying parts no shipped tree can serve (T5-XXL in SD3),
or lacking parts a shipped tree holds no weights for (text encoders, VAE), is refused here with
what was found: diffusers would otherwise fail far from the cause, or reach for the hub.
No torch: the daemon uses this to count tokens with the tree a file will load with.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from daemon.models.errors import ModelError

CONFIGS = Path(__file__).resolve().parent / "configs"
CLIP_LICENSE = CONFIGS / "CLIP-VOCABULARY-LICENSE.txt"
T5_LICENSE = CONFIGS / "T5-VOCABULARY-LICENSE.txt"
DENOISER_PREFIXES = ("model.diffusion_model.", "")
"""Where a file's denoiser weights sit: under the LDM prefix, or bare (Flux's own transformer-only files)."""

Shapes = Mapping[str, tuple[int, ...]]

ENCODER_KEYS: dict[str, dict[str, tuple[str, ...]]] = {
    "sd15": {"text_encoder": ("cond_stage_model.transformer.text_model.embeddings.token_embedding.weight",
                              "cond_stage_model.transformer.embeddings.token_embedding.weight")},
    "sd2": {"text_encoder": ("cond_stage_model.model.token_embedding.weight",)},
    "sdxl": {"text_encoder": ("conditioner.embedders.0.transformer.text_model.embeddings.token_embedding.weight",),
             "text_encoder_2": ("conditioner.embedders.1.model.token_embedding.weight",)},
    "sd3": {"text_encoder": ("text_encoders.clip_l.transformer.text_model.embeddings.token_embedding.weight",),
            "text_encoder_2": ("text_encoders.clip_g.transformer.text_model.embeddings.token_embedding.weight",)},
    "flux": {"text_encoder": ("text_encoders.clip_l.transformer.text_model.embeddings.token_embedding.weight",)},
}
"""Family → each CLIP text encoder's token embedding in the original layout (its presence and shape)."""
T5_PREFIX = "text_encoders.t5xxl."
T5_COMPONENT = {"sd3": "text_encoder_3", "flux": "text_encoder_2", "pixart": "text_encoder"}
OPTIONAL = {"sd3": ("text_encoder_3", "tokenizer_3")}
"""Family → the parts its pipeline runs without when a file lacks their weights: SD3's T5-XXL
(most of SD3's published files leave it out; FLUX.1 cannot run without it)."""
VAE_PREFIX = {"flux": "vae."}
FLUX_CONVERTIBLE_WIDTH = 3072
"""diffusers 0.42 splits Black Forest Labs' fused single-block weights at FLUX.1's width whatever
the config says (`convert_flux_transformer_checkpoint_to_diffusers`), so only that width converts."""
"""Where a file's VAE sits (default `first_stage_model.`)."""


@dataclass(frozen=True)
class ShippedTree:
    path: Path
    denoiser: str
    """The folder of the denoiser config that fits (`unet`, `transformer`, `transformer-sd3.5-large`)."""
    left_out: tuple[str, ...] = ()
    """Components the pipeline gets as None: those the tree's index leaves out, and the optional
    parts the file has no weights for (SD3 without T5)."""

    @property
    def component(self) -> str:
        """The pipeline component the denoiser folder configures (`unet` or `transformer`)."""
        return self.denoiser.split("-")[0]

    @property
    def default_denoiser(self) -> bool:
        return self.denoiser == self.component

    @property
    def variant_scheduler(self) -> str | None:
        """The folder of the variant's own scheduler config (FLUX.1 schnell's), if it has one."""
        if self.default_denoiser:
            return None
        folder = "scheduler-" + self.denoiser.split("-", 1)[1]
        return folder if (self.path / folder / "scheduler_config.json").is_file() else None


def denoiser_folder(tree: Path) -> str:
    """A tree's denoiser component: a UNet, else a transformer."""
    return "unet" if (tree / "unet").is_dir() else "transformer"


def trees(family: str) -> list[Path]:
    """The trees shipped for `family`'s single files: the real model's first, then the tiny one's."""
    return [tree for tree in (CONFIGS / family, CONFIGS / f"tiny-{family}") if (tree / "model_index.json").is_file()]


def built_in_tree(family: str) -> Path | None:
    """The tree of `family`'s built-in tiny model (its tokenizers are the built model's)."""
    tree = CONFIGS / f"tiny-{family}"
    return tree if (tree / "model_index.json").is_file() else None


def absent_components(tree: Path) -> list[str]:
    """Components a tree's model_index.json leaves out (SD3's T5 in the shipped tree): the pipeline
    gets None for them, as diffusers asks, instead of looking for them."""
    index = json.loads((tree / "model_index.json").read_text())
    return [name for name, value in index.items()
            if not name.startswith("_") and isinstance(value, list) and value[:1] == [None]]


def header_shapes(path: Path) -> dict[str, tuple[int, ...]]:
    """Each tensor's shape from a .safetensors file's header (no tensor is read)."""
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="numpy") as handle:
            return {key: tuple(handle.get_slice(key).get_shape()) for key in handle.keys()}  # noqa: SIM118 (a handle, not a dict)
    except Exception as exc:  # safetensors raises its own error types for a bad header
        raise ModelError(f"{path}: not a readable .safetensors file ({exc})") from exc


def choose(path: Path, family: str, shapes: Shapes) -> ShippedTree:
    """The shipped tree (and denoiser folder) a single file of `family` loads with, or a ModelError."""
    refuse_unconvertible(path, family, shapes)
    candidates = trees(family)
    if not candidates:
        holds = " (a PixArt file holds the transformer alone: the T5-XXL and VAE weights come from that directory)" \
            if family == "pixart" else ""
        raise ModelError(f"{path}: a single-file {family} model needs a config tree, and the package ships none "
                         f"for {family}; set the model's config_dir to a local diffusers directory of the same "
                         f"family{holds} (nothing is fetched: the network is off)")
    misfits: list[str] = []
    for tree in candidates:
        for denoiser in _denoisers(tree):
            problem = _misfit(family, tree, denoiser, shapes)
            if problem is None:
                _refuse_missing_parts(path, family, tree, shapes)
                return ShippedTree(tree, denoiser, left_out(family, tree, shapes))
            misfits.append(f"{tree.name}/{denoiser}: {problem}")
    raise ModelError(f"{path}: none of the config trees shipped for {family} fits this file ({'; '.join(misfits)}); "
                     "set the model's config_dir to the config tree of this model")


def refuse_unconvertible(path: Path, family: str, shapes: Shapes) -> None:
    """A Flux file in Black Forest Labs' layout at another width than FLUX.1's: diffusers' converter
    would fail deep inside with a tensor split error, so it is refused here, saying why."""
    found = _shape_of(shapes, "img_in.weight") if family == "flux" else None
    if found is not None and found[0] != FLUX_CONVERTIBLE_WIDTH:
        raise ModelError(f"{path}: this Flux transformer is {found[0]} wide (img_in.weight is {_shape_text(found)}), "
                         f"and diffusers converts Black Forest Labs' single-file layout only at FLUX.1's width "
                         f"{FLUX_CONVERTIBLE_WIDTH}; bring this model as a diffusers directory instead")


def tokenizer_tree(path: Path, family: str) -> ShippedTree | None:
    """The shipped tree whose tokenizers a single file's jobs are counted with (None: none fits)."""
    try:
        return choose(path, family, header_shapes(path))
    except ModelError:
        return None


def left_out(family: str, tree: Path, shapes: Shapes) -> tuple[str, ...]:
    """What a pipeline built from `tree` and a file with these tensors runs without."""
    optional = OPTIONAL.get(family, ())
    lacking = optional if optional and not any(key.startswith(T5_PREFIX) for key in shapes) else ()
    return tuple(dict.fromkeys([*absent_components(tree), *lacking]))


def _denoisers(tree: Path) -> Iterator[str]:
    base = denoiser_folder(tree)
    yield base
    yield from sorted(p.name for p in tree.glob(f"{base}-*") if (p / "config.json").is_file())


def _config(tree: Path, folder: str) -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads((tree / folder / "config.json").read_text())
    return loaded


def _shape_of(shapes: Shapes, key: str) -> tuple[int, ...] | None:
    for prefix in DENOISER_PREFIXES:
        if prefix + key in shapes:
            return shapes[prefix + key]
    return None


def _expected(family: str, config: dict[str, Any]) -> tuple[dict[str, tuple[int, ...]], list[str]]:
    """Denoiser keys (original layout, without prefix) → shape the config gives; keys it rules out."""
    expected: dict[str, tuple[int, ...]] = {}
    ruled_out: list[str] = []
    if family in ("sd15", "sd2", "sdxl"):
        width = int(config["block_out_channels"][0])
        expected["input_blocks.0.0.weight"] = (width, int(config["in_channels"]), 3, 3)
        expected["out.2.weight"] = (int(config["out_channels"]), width, 3, 3)
        if config.get("addition_embed_type") == "text_time":
            expected["label_emb.0.0.weight"] = (4 * width, int(config["projection_class_embeddings_input_dim"]))
        return expected, ruled_out
    width = int(config["num_attention_heads"]) * int(config["attention_head_dim"])
    last = int(config["num_layers"]) - 1
    if family == "sd3":
        patch = int(config["patch_size"])
        expected["x_embedder.proj.weight"] = (width, int(config["in_channels"]), patch, patch)
        expected[f"joint_blocks.{last}.x_block.attn.qkv.weight"] = (3 * width, width)
        ruled_out.append(f"joint_blocks.{last + 1}.x_block.attn.qkv.weight")
        if config.get("qk_norm"):
            expected["joint_blocks.0.x_block.attn.ln_q.weight"] = (int(config["attention_head_dim"]),)
        else:
            ruled_out.append("joint_blocks.0.x_block.attn.ln_q.weight")
        if 0 in (config.get("dual_attention_layers") or ()):
            expected["joint_blocks.0.x_block.attn2.qkv.weight"] = (3 * width, width)
        else:
            ruled_out.append("joint_blocks.0.x_block.attn2.qkv.weight")
    elif family == "flux":
        expected["img_in.weight"] = (width, int(config["in_channels"]))
        expected[f"double_blocks.{last}.img_attn.qkv.weight"] = (3 * width, width)
        ruled_out.append(f"double_blocks.{last + 1}.img_attn.qkv.weight")
        if config.get("guidance_embeds"):
            expected["guidance_in.in_layer.weight"] = (width, 256)
        else:
            ruled_out.append("guidance_in.in_layer.weight")
    return expected, ruled_out


def _misfit(family: str, tree: Path, denoiser: str, shapes: Shapes) -> str | None:
    """Why the file's weights do not fit `tree` with `denoiser`, or None when they do."""
    expected, ruled_out = _expected(family, _config(tree, denoiser))
    for key, shape in expected.items():
        found = _shape_of(shapes, key)
        if found != shape:
            return f"{key} is {_shape_text(found)}, the config gives {_shape_text(shape)}"
    for key in ruled_out:
        if _shape_of(shapes, key) is not None:
            return f"the file has {key}, which this config has not"
    for component, keys in ENCODER_KEYS.get(family, {}).items():
        found = next((shapes[k] for k in keys if k in shapes), None)
        if found is None:
            continue
        text = _config(tree, component)
        shape = (int(text["vocab_size"]), int(text["hidden_size"]))
        if found != shape:
            return f"{component}'s token embedding is {_shape_text(found)}, the config gives {_shape_text(shape)}"
    return None


def parts_not_in_file(family: str, tree: Path, shapes: Shapes) -> list[str]:
    """The components of `tree`'s pipeline besides the denoiser (CLIP and T5 text encoders, VAE)
    whose weights a file with these tensors lacks: a Flux or SD3 file is often the denoiser alone."""
    missing = [component for component, keys in ENCODER_KEYS.get(family, {}).items()
               if not any(k in shapes for k in keys)]
    t5 = T5_COMPONENT.get(family)
    if t5 and t5 not in absent_components(tree) and not any(key.startswith(T5_PREFIX) for key in shapes):
        missing.append(t5)
    vae = VAE_PREFIX.get(family, "first_stage_model.")
    if not any(key.startswith(vae) for key in shapes):
        missing.append("vae")
    return missing


def borrowed_parts(path: Path, config_dir: str, family: str) -> dict[str, Path]:
    """The components a single file lacks (text encoders, VAE) that its config_dir's own weights
    supply, by name. diffusers' single-file loader refuses a file without them, and Flux's and SD
    3.5's published files are often the denoiser alone, the encoders and VAE shared separately."""
    if not path.is_file() or not config_dir:
        return {}
    tree = Path(config_dir).expanduser()
    index = json.loads((tree / "model_index.json").read_text())
    shapes = header_shapes(path)
    refuse_unconvertible(path, family, shapes)
    wanted = [name for name in parts_not_in_file(family, tree, shapes)
              if isinstance(index.get(name), list) and index[name][0] is not None]
    empty = [name for name in wanted if not any((tree / name).glob("*.safetensors"))]
    if empty:
        raise ModelError(f"{path}: the file has no weights for {', '.join(empty)}, and config_dir {tree} has no "
                         f".safetensors in {', '.join(empty)}/ either; put those components' weights there")
    return {name: tree / name for name in wanted}


def _refuse_missing_parts(path: Path, family: str, tree: Path, shapes: Shapes) -> None:
    """A shipped tree holds configs, no weights: every part the pipeline needs must be in the file."""
    t5 = T5_COMPONENT.get(family)
    if t5 and t5 in absent_components(tree) and any(key.startswith(T5_PREFIX) for key in shapes):
        raise ModelError(f"{path}: the file carries T5-XXL weights ({T5_PREFIX}*), and the shipped {family} config "
                         f"tree runs {family} without T5 (as most of its published files are); set config_dir to a "
                         f"local diffusers directory of this model that has {t5.replace('text_encoder', 'tokenizer')}/")
    missing = [f"{part} (T5-XXL)" if part == t5 else part for part in parts_not_in_file(family, tree, shapes)
               if part not in OPTIONAL.get(family, ())]
    if missing:
        raise ModelError(f"{path}: the file has no weights for {', '.join(missing)}, and the shipped config tree "
                         "holds configs only; set config_dir to a local diffusers directory of this model that "
                         "holds them (its own weights are used for what the file lacks)")


def _shape_text(shape: tuple[int, ...] | None) -> str:
    return "missing" if shape is None else "×".join(str(n) for n in shape)
