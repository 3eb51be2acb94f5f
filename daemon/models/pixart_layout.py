"""PixArt-Σ's transformer in its original single-file layout, to diffusers' names and back.

diffusers 0.42 has no single-file loader for PixArt. PixArt-Σ transformers (the published ones and
their fine-tunes) are shared as one file in the layout of the PixArt-sigma repository
(`blocks.N.attn.qkv`, `blocks.N.cross_attn.kv_linear`, `y_embedder`, `t_block`, `final_layer`),
the transformer alone: its T5-XXL and VAE come separately. So a PixArt single file loads here with
a config_dir whose own text_encoder and vae weights supply the rest (shipped.borrowed_parts), and
its transformer is renamed by this module and built with the config_dir's transformer config.
The writer (`to_original`) exists so the built-in tiny-pixart is also a single file, loaded for real
in the tests.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

from daemon.models.errors import ModelError

if TYPE_CHECKING:
    import torch

StateDict = dict[str, "torch.Tensor"]

OUTSIDE_BLOCKS = (
    ("pos_embed.proj", "x_embedder.proj"),
    ("caption_projection.linear_1", "y_embedder.y_proj.fc1"),
    ("caption_projection.linear_2", "y_embedder.y_proj.fc2"),
    ("adaln_single.emb.timestep_embedder.linear_1", "t_embedder.mlp.0"),
    ("adaln_single.emb.timestep_embedder.linear_2", "t_embedder.mlp.2"),
    ("adaln_single.emb.resolution_embedder.linear_1", "csize_embedder.mlp.0"),
    ("adaln_single.emb.resolution_embedder.linear_2", "csize_embedder.mlp.2"),
    ("adaln_single.emb.aspect_ratio_embedder.linear_1", "ar_embedder.mlp.0"),
    ("adaln_single.emb.aspect_ratio_embedder.linear_2", "ar_embedder.mlp.2"),
    ("adaln_single.linear", "t_block.1"),
    ("proj_out", "final_layer.linear"),
    ("scale_shift_table", "final_layer.scale_shift_table"),
)
"""diffusers name → original name, outside the transformer blocks (micro-conditions: PixArt-α's)."""

IN_BLOCK = (
    ("scale_shift_table", "scale_shift_table"),
    ("attn1.to_out.0", "attn.proj"),
    ("attn1.q_norm", "attn.q_norm"),
    ("attn1.k_norm", "attn.k_norm"),
    ("attn2.to_q", "cross_attn.q_linear"),
    ("attn2.to_out.0", "cross_attn.proj"),
    ("ff.net.0.proj", "mlp.fc1"),
    ("ff.net.2", "mlp.fc2"),
)
"""The same inside block N (`transformer_blocks.N.` ↔ `blocks.N.`)."""

FUSED = (
    ("attn.qkv", ("attn1.to_q", "attn1.to_k", "attn1.to_v")),
    ("cross_attn.kv_linear", ("attn2.to_k", "attn2.to_v")),
)
"""Original projections that hold several of diffusers' stacked along the output dimension."""

NOT_LOADED = ("y_embedder.y_embedding", "pos_embed")
"""In original files but not in diffusers' model: the null caption used in training, and a fixed
position table diffusers computes itself."""


def _rename(key: str, table: tuple[tuple[str, str], ...], forward: bool) -> str | None:
    for diffusers_name, original_name in table:
        old, new = (diffusers_name, original_name) if forward else (original_name, diffusers_name)
        if key == old or key.startswith(old + "."):
            return new + key[len(old):]
    return None


def _split_block(key: str, prefix: str) -> tuple[str, str] | None:
    """(`prefix` + index + ".", the rest) for a key inside a block, else None."""
    if not key.startswith(prefix):
        return None
    index, _, rest = key[len(prefix):].partition(".")
    return (f"{prefix}{index}.", rest) if index.isdigit() and rest else None


def to_original(weights: StateDict) -> StateDict:
    """A PixArtTransformer2DModel's state dict under the original names (the writer's side)."""
    import torch

    out: StateDict = {}
    fused: dict[str, tuple[tuple[str, ...], dict[str, torch.Tensor]]] = {}  # original name → (order, parts)
    unnamed: list[str] = []
    for key, tensor in weights.items():
        block = _split_block(key, "transformer_blocks.")
        if block is None:
            name = _rename(key, OUTSIDE_BLOCKS, forward=True)
        else:
            head, rest = block
            target = "blocks." + head.split(".")[1] + "."
            name = _rename(rest, IN_BLOCK, forward=True)
            name = None if name is None else target + name
            for original, parts in FUSED:
                part = next((p for p in parts if rest.startswith(p + ".")), None)
                if part is not None:
                    fused.setdefault(target + original + rest[len(part):], (parts, {}))[1][part] = tensor
                    name = ""
        if name is None:
            unnamed.append(key)
        elif name:
            out[name] = tensor
    if unnamed:
        raise ValueError(f"no PixArt name for weights {', '.join(sorted(unnamed)[:5])}")
    for name, (order, pieces) in fused.items():
        out[name] = torch.cat([pieces[part] for part in order], dim=0)
    return out


def from_original(path: Path, weights: StateDict) -> StateDict:
    """A file's original PixArt weights under diffusers' names (the loader's side); a weight with no
    diffusers name is an error naming it, rather than one silently dropped."""
    out: StateDict = {}
    unknown: list[str] = []
    for key, tensor in weights.items():
        if key in NOT_LOADED:
            continue
        block = _split_block(key, "blocks.")
        if block is None:
            name = _rename(key, OUTSIDE_BLOCKS, forward=False)
            if name is None:
                unknown.append(key)
            else:
                out[name] = tensor
            continue
        head, rest = block
        target = "transformer_blocks." + head.split(".")[1] + "."
        fused = next(((o, parts) for o, parts in FUSED if rest.startswith(o + ".")), None)
        if fused is not None:
            original, parts = fused
            suffix = rest[len(original):]
            if tensor.shape[0] % len(parts):
                raise ModelError(f"{path}: {key} is {tuple(tensor.shape)}, not {len(parts)} equal projections")
            for part, piece in zip(parts, tensor.chunk(len(parts), dim=0), strict=True):
                out[target + part + suffix] = piece
            continue
        name = _rename(rest, IN_BLOCK, forward=False)
        if name is None:
            unknown.append(key)
        else:
            out[target + name] = tensor
    if unknown:
        raise ModelError(f"{path}: {len(unknown)} weights have no place in a PixArt transformer "
                         f"(such as {', '.join(sorted(unknown)[:3])}); is this a PixArt-Σ transformer file?")
    return out


def load_transformer(path: Path, config_folder: Path, dtype: Any) -> Any:
    """The file's transformer, built with the config in `config_folder` and its weights renamed;
    every weight the config asks for must come from the file, at the config's shape."""
    import diffusers
    from accelerate import init_empty_weights
    from safetensors.torch import load_file

    config = json.loads((config_folder / "config.json").read_text())
    model_class = getattr(diffusers, str(config.get("_class_name", "PixArtTransformer2DModel")))
    weights = {key: tensor.to(dtype) for key, tensor in from_original(path, load_file(str(path))).items()}
    with init_empty_weights():  # parameters on the meta device, to be replaced by the file's; buffers real
        model = model_class.from_config(config)
    try:
        model.load_state_dict(weights, strict=True, assign=True)
    except RuntimeError as exc:
        reason = " ".join(str(exc).split())
        raise ModelError(f"{path}: this PixArt transformer does not fit the config in {config_folder} "
                         f"({reason[:400]}); set config_dir to the diffusers directory of this model's "
                         "variant") from exc
    return model.eval()  # its buffer (the position table) stays float32, as from_pretrained leaves it
