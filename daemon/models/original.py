"""Write a diffusers-layout pipeline as ONE .safetensors file in its family's original key layout.

diffusers ships converters from the original layouts (CompVis/LDM for SD 1.x/XL, Black Forest
Labs' for Flux, Stability's MMDiT for SD3) to its own, for loading; this module is the other way,
so the built-in tiny models exist as single files and single-file loading is tested for real.
Written here from the layouts' structure (checked by round trips in tests/models):

- sd15: UNet → `model.diffusion_model.*`, VAE → `first_stage_model.*`, CLIP →
  `cond_stage_model.transformer.*`.
- sdxl: UNet → `model.diffusion_model.*` (LDM, with the text-time `label_emb`), VAE →
  `first_stage_model.*`, CLIP-L → `conditioner.embedders.0.transformer.*`, the second encoder →
  `conditioner.embedders.1.model.*` in OpenCLIP's layout (fused `in_proj`, `resblocks`,
  `text_projection` as a matrix applied from the right).
- sd3: MMDiT → `model.diffusion_model.*` (`joint_blocks.N.{x,context}_block`, fused qkv),
  VAE → `first_stage_model.*`, `text_encoders.{clip_l,clip_g,t5xxl}.transformer.*`.
- flux (an all-in-one file, as ComfyUI packs them): transformer → `model.diffusion_model.*` in
  BFL's layout (fused qkv, `double_blocks`/`single_blocks`), VAE → `vae.*`, CLIP-L →
  `text_encoders.clip_l.transformer.*`, T5 → `text_encoders.t5xxl.transformer.*`.

- pixart: the transformer alone, as PixArt-Σ files are, in the PixArt-sigma repository's layout
  (daemon.models.pixart_layout, which also reads it: diffusers has no single-file loader for it).

Each writer refuses a weight it has no original
name for, so a model the mapping does not cover fails here rather than as a silently wrong file.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from daemon.models import pixart_layout

if TYPE_CHECKING:
    import torch

StateDict = dict[str, "torch.Tensor"]

WRITABLE = ("sd15", "sd2", "sdxl", "sd3", "flux", "pixart")

RESNET = {"norm1": "in_layers.0", "conv1": "in_layers.2", "time_emb_proj": "emb_layers.1",
          "norm2": "out_layers.0", "conv2": "out_layers.3", "conv_shortcut": "skip_connection"}
VAE_ATTENTION = {"group_norm": "norm", "to_q": "q", "to_k": "k", "to_v": "v", "to_out.0": "proj_out"}


def _rename_inner(rest: str, table: dict[str, str]) -> str:
    for new, old in table.items():
        if rest.startswith(new + "."):
            return old + rest[len(new):]
    return rest


def ldm_unet(unet: Any) -> StateDict:
    """A UNet2DConditionModel's weights under LDM names (without the `model.diffusion_model.` prefix)."""
    per = unet.config.layers_per_block + 1
    out: StateDict = {}
    fixed = {"time_embedding.linear_1": "time_embed.0", "time_embedding.linear_2": "time_embed.2",
             "add_embedding.linear_1": "label_emb.0.0", "add_embedding.linear_2": "label_emb.0.2",
             "conv_in": "input_blocks.0.0", "conv_norm_out": "out.0", "conv_out": "out.2"}
    for key, tensor in unet.state_dict().items():
        parts = key.split(".")
        head = next((h for h in fixed if key.startswith(h + ".")), None)
        if head is not None:
            out[fixed[head] + key[len(head):]] = tensor
            continue
        if parts[0] in ("down_blocks", "up_blocks"):
            block, kind, index, rest = int(parts[1]), parts[2], int(parts[3]), ".".join(parts[4:])
            if parts[0] == "down_blocks":
                if kind == "downsamplers":
                    name = f"input_blocks.{(block + 1) * per}.0.op.{'.'.join(parts[5:])}"
                else:
                    slot = block * per + index + 1
                    name = f"input_blocks.{slot}.{0 if kind == 'resnets' else 1}."
                    name += _rename_inner(rest, RESNET) if kind == "resnets" else rest
            else:
                if kind == "upsamplers":
                    has_attention = any(k.startswith(f"up_blocks.{block}.attentions.") for k in unet.state_dict())
                    name = f"output_blocks.{block * per + per - 1}.{2 if has_attention else 1}.{'.'.join(parts[4:])}"
                else:
                    slot = block * per + index
                    name = f"output_blocks.{slot}.{0 if kind == 'resnets' else 1}."
                    name += _rename_inner(rest, RESNET) if kind == "resnets" else rest
            out[name] = tensor
        elif parts[0] == "mid_block":
            kind, index, rest = parts[1], int(parts[2]), ".".join(parts[3:])
            slot = 1 if kind == "attentions" else 2 * index
            out[f"middle_block.{slot}." + (_rename_inner(rest, RESNET) if kind == "resnets" else rest)] = tensor
        else:
            raise ValueError(f"no LDM name for UNet weight {key}")
    return out


def ldm_vae(vae: Any) -> StateDict:
    """An AutoencoderKL's weights under LDM names (no prefix)."""
    levels = len(vae.config.block_out_channels)
    out: StateDict = {}
    for key, tensor in vae.state_dict().items():
        parts = key.split(".")
        side, name = parts[0], key
        if side in ("encoder", "decoder") and parts[1] in ("down_blocks", "up_blocks"):
            level = int(parts[2]) if side == "encoder" else levels - 1 - int(parts[2])
            where = "down" if side == "encoder" else "up"
            if parts[3] == "resnets":
                name = f"{side}.{where}.{level}.block.{parts[4]}." + \
                    _rename_inner(".".join(parts[5:]), {"conv_shortcut": "nin_shortcut"})
            else:
                name = f"{side}.{where}.{level}.{'downsample' if side == 'encoder' else 'upsample'}.conv." + parts[-1]
        elif side in ("encoder", "decoder") and parts[1] == "mid_block":
            rest = ".".join(parts[4:])
            if parts[2] == "resnets":
                name = f"{side}.mid.block_{int(parts[3]) + 1}." + \
                    _rename_inner(rest, {"conv_shortcut": "nin_shortcut"})
            else:
                name = f"{side}.mid.attn_1." + _rename_inner(rest, VAE_ATTENTION)
                if tensor.ndim == 2:  # LDM's attention projections are 1×1 convolutions
                    tensor = tensor[:, :, None, None]
        elif side in ("encoder", "decoder") and parts[1] == "conv_norm_out":
            name = f"{side}.norm_out.{parts[-1]}"
        out[name] = tensor
    return out


def flux_transformer(transformer: Any) -> StateDict:
    """A FluxTransformer2DModel's weights in Black Forest Labs' layout (no prefix)."""
    import torch

    sd = transformer.state_dict()
    out: StateDict = {}

    def take(name: str, *keys: str, suffix: str = "weight") -> None:
        out[f"{name}.{suffix}"] = torch.cat([sd[f"{k}.{suffix}"] for k in keys]) if len(keys) > 1 \
            else sd[f"{keys[0]}.{suffix}"]

    def linear(name: str, *keys: str) -> None:
        take(name, *keys)
        take(name, *keys, suffix="bias")

    linear("img_in", "x_embedder")
    linear("txt_in", "context_embedder")
    linear("time_in.in_layer", "time_text_embed.timestep_embedder.linear_1")
    linear("time_in.out_layer", "time_text_embed.timestep_embedder.linear_2")
    linear("vector_in.in_layer", "time_text_embed.text_embedder.linear_1")
    linear("vector_in.out_layer", "time_text_embed.text_embedder.linear_2")
    if transformer.config.guidance_embeds:
        linear("guidance_in.in_layer", "time_text_embed.guidance_embedder.linear_1")
        linear("guidance_in.out_layer", "time_text_embed.guidance_embedder.linear_2")
    for i in range(transformer.config.num_layers):
        src, dst = f"transformer_blocks.{i}", f"double_blocks.{i}"
        linear(f"{dst}.img_mod.lin", f"{src}.norm1.linear")
        linear(f"{dst}.txt_mod.lin", f"{src}.norm1_context.linear")
        linear(f"{dst}.img_attn.qkv", f"{src}.attn.to_q", f"{src}.attn.to_k", f"{src}.attn.to_v")
        linear(f"{dst}.txt_attn.qkv", f"{src}.attn.add_q_proj", f"{src}.attn.add_k_proj", f"{src}.attn.add_v_proj")
        linear(f"{dst}.img_attn.proj", f"{src}.attn.to_out.0")
        linear(f"{dst}.txt_attn.proj", f"{src}.attn.to_add_out")
        out[f"{dst}.img_attn.norm.query_norm.scale"] = sd[f"{src}.attn.norm_q.weight"]
        out[f"{dst}.img_attn.norm.key_norm.scale"] = sd[f"{src}.attn.norm_k.weight"]
        out[f"{dst}.txt_attn.norm.query_norm.scale"] = sd[f"{src}.attn.norm_added_q.weight"]
        out[f"{dst}.txt_attn.norm.key_norm.scale"] = sd[f"{src}.attn.norm_added_k.weight"]
        linear(f"{dst}.img_mlp.0", f"{src}.ff.net.0.proj")
        linear(f"{dst}.img_mlp.2", f"{src}.ff.net.2")
        linear(f"{dst}.txt_mlp.0", f"{src}.ff_context.net.0.proj")
        linear(f"{dst}.txt_mlp.2", f"{src}.ff_context.net.2")
    for i in range(transformer.config.num_single_layers):
        src, dst = f"single_transformer_blocks.{i}", f"single_blocks.{i}"
        linear(f"{dst}.linear1", f"{src}.attn.to_q", f"{src}.attn.to_k", f"{src}.attn.to_v", f"{src}.proj_mlp")
        linear(f"{dst}.linear2", f"{src}.proj_out")
        linear(f"{dst}.modulation.lin", f"{src}.norm.linear")
        out[f"{dst}.norm.query_norm.scale"] = sd[f"{src}.attn.norm_q.weight"]
        out[f"{dst}.norm.key_norm.scale"] = sd[f"{src}.attn.norm_k.weight"]
    linear("final_layer.linear", "proj_out")
    for suffix in ("weight", "bias"):  # BFL orders the final modulation (shift, scale); diffusers (scale, shift)
        scale, shift = sd[f"norm_out.linear.{suffix}"].chunk(2, dim=0)
        out[f"final_layer.adaLN_modulation.1.{suffix}"] = torch.cat([shift, scale], dim=0)
    return out


def hf_clip(encoder: Any) -> StateDict:
    """A transformers CLIP text encoder's weights as the original files hold them (`text_model.` included)."""
    return {(key if key.startswith(("text_model.", "text_projection")) else "text_model." + key): tensor
            for key, tensor in encoder.state_dict().items()}


OPEN_CLIP_LAYER = {"self_attn.out_proj": "attn.out_proj", "layer_norm1": "ln_1", "layer_norm2": "ln_2",
                   "mlp.fc1": "mlp.c_fc", "mlp.fc2": "mlp.c_proj"}


def open_clip(encoder: Any) -> StateDict:
    """A transformers CLIP text encoder (with projection) in OpenCLIP's layout (no prefix)."""
    import torch

    sd = {key.removeprefix("text_model."): tensor for key, tensor in encoder.state_dict().items()}
    out: StateDict = {"token_embedding.weight": sd.pop("embeddings.token_embedding.weight"),
                      "positional_embedding": sd.pop("embeddings.position_embedding.weight"),
                      "ln_final.weight": sd.pop("final_layer_norm.weight"),
                      "ln_final.bias": sd.pop("final_layer_norm.bias"),
                      # SD 2.x's encoder has no projection in diffusers; its files hold a square one, unused
                      "text_projection": sd.pop("text_projection.weight").T if "text_projection.weight" in sd
                      else torch.eye(encoder.config.hidden_size)}
    for i in range(encoder.config.num_hidden_layers):
        src, dst = f"encoder.layers.{i}", f"transformer.resblocks.{i}"
        for suffix in ("weight", "bias"):
            out[f"{dst}.attn.in_proj_{suffix}"] = torch.cat(
                [sd.pop(f"{src}.self_attn.{part}_proj.{suffix}") for part in "qkv"])
            for new, old in OPEN_CLIP_LAYER.items():
                out[f"{dst}.{old}.{suffix}"] = sd.pop(f"{src}.{new}.{suffix}")
    _refuse_leftovers("OpenCLIP", sd)
    return out


def mmdit(transformer: Any) -> StateDict:
    """An SD3Transformer2DModel's weights in Stability's MMDiT layout (no prefix)."""
    import torch

    sd = dict(transformer.state_dict())
    out: StateDict = {}

    def move(name: str, *keys: str, swap: bool = False) -> None:
        for suffix in ("weight", "bias"):
            tensors = [sd.pop(f"{key}.{suffix}") for key in keys]
            tensor = torch.cat(tensors) if len(tensors) > 1 else tensors[0]
            if swap:  # the original orders an AdaLayerNormContinuous' output (shift, scale); diffusers (scale, shift)
                scale, shift = tensor.chunk(2, dim=0)
                tensor = torch.cat([shift, scale], dim=0)
            out[f"{name}.{suffix}"] = tensor

    def scale(name: str, key: str) -> None:
        if f"{key}.weight" in sd:
            out[f"{name}.weight"] = sd.pop(f"{key}.weight")

    out["pos_embed"] = sd.pop("pos_embed.pos_embed")
    move("x_embedder.proj", "pos_embed.proj")
    move("t_embedder.mlp.0", "time_text_embed.timestep_embedder.linear_1")
    move("t_embedder.mlp.2", "time_text_embed.timestep_embedder.linear_2")
    move("y_embedder.mlp.0", "time_text_embed.text_embedder.linear_1")
    move("y_embedder.mlp.2", "time_text_embed.text_embedder.linear_2")
    move("context_embedder", "context_embedder")
    for i in range(transformer.config.num_layers):
        src, x, ctx = f"transformer_blocks.{i}", f"joint_blocks.{i}.x_block", f"joint_blocks.{i}.context_block"
        pre_only = f"{src}.attn.to_add_out.weight" not in sd  # the last block's context stream ends there
        move(f"{x}.attn.qkv", f"{src}.attn.to_q", f"{src}.attn.to_k", f"{src}.attn.to_v")
        move(f"{ctx}.attn.qkv", f"{src}.attn.add_q_proj", f"{src}.attn.add_k_proj", f"{src}.attn.add_v_proj")
        move(f"{x}.attn.proj", f"{src}.attn.to_out.0")
        scale(f"{x}.attn.ln_q", f"{src}.attn.norm_q")
        scale(f"{x}.attn.ln_k", f"{src}.attn.norm_k")
        scale(f"{ctx}.attn.ln_q", f"{src}.attn.norm_added_q")
        scale(f"{ctx}.attn.ln_k", f"{src}.attn.norm_added_k")
        if f"{src}.attn2.to_q.weight" in sd:  # SD 3.5's dual-attention blocks
            move(f"{x}.attn2.qkv", f"{src}.attn2.to_q", f"{src}.attn2.to_k", f"{src}.attn2.to_v")
            move(f"{x}.attn2.proj", f"{src}.attn2.to_out.0")
            scale(f"{x}.attn2.ln_q", f"{src}.attn2.norm_q")
            scale(f"{x}.attn2.ln_k", f"{src}.attn2.norm_k")
        move(f"{x}.adaLN_modulation.1", f"{src}.norm1.linear")
        move(f"{ctx}.adaLN_modulation.1", f"{src}.norm1_context.linear", swap=pre_only)
        move(f"{x}.mlp.fc1", f"{src}.ff.net.0.proj")
        move(f"{x}.mlp.fc2", f"{src}.ff.net.2")
        if not pre_only:
            move(f"{ctx}.attn.proj", f"{src}.attn.to_add_out")
            move(f"{ctx}.mlp.fc1", f"{src}.ff_context.net.0.proj")
            move(f"{ctx}.mlp.fc2", f"{src}.ff_context.net.2")
    move("final_layer.linear", "proj_out")
    move("final_layer.adaLN_modulation.1", "norm_out.linear", swap=True)
    _refuse_leftovers("MMDiT", sd)
    return out


def _refuse_leftovers(layout: str, rest: StateDict) -> None:
    if rest:
        raise ValueError(f"no {layout} name for weights {', '.join(sorted(rest)[:5])}")


def _prefixed(prefix: str, weights: StateDict) -> StateDict:
    return {prefix + key: tensor.contiguous() for key, tensor in weights.items()}


def original_state_dict(family: str, pipe: Any) -> StateDict:
    if family == "sd15":
        return {**_prefixed("model.diffusion_model.", ldm_unet(pipe.unet)),
                **_prefixed("first_stage_model.", ldm_vae(pipe.vae)),
                **_prefixed("cond_stage_model.transformer.", hf_clip(pipe.text_encoder))}
    if family == "sd2":
        return {**_prefixed("model.diffusion_model.", ldm_unet(pipe.unet)),
                **_prefixed("first_stage_model.", ldm_vae(pipe.vae)),
                **_prefixed("cond_stage_model.model.", open_clip(pipe.text_encoder))}
    if family == "sdxl":
        return {**_prefixed("model.diffusion_model.", ldm_unet(pipe.unet)),
                **_prefixed("first_stage_model.", ldm_vae(pipe.vae)),
                **_prefixed("conditioner.embedders.0.transformer.", hf_clip(pipe.text_encoder)),
                **_prefixed("conditioner.embedders.1.model.", open_clip(pipe.text_encoder_2))}
    if family == "sd3":
        t5 = getattr(pipe, "text_encoder_3", None)  # SD3 runs without T5; files without it are published too
        return {**_prefixed("model.diffusion_model.", mmdit(pipe.transformer)),
                **_prefixed("first_stage_model.", ldm_vae(pipe.vae)),
                **_prefixed("text_encoders.clip_l.transformer.", hf_clip(pipe.text_encoder)),
                **_prefixed("text_encoders.clip_g.transformer.", hf_clip(pipe.text_encoder_2)),
                **(_prefixed("text_encoders.t5xxl.transformer.", t5.state_dict()) if t5 is not None else {})}
    if family == "flux":
        return {**_prefixed("model.diffusion_model.", flux_transformer(pipe.transformer)),
                **_prefixed("vae.", ldm_vae(pipe.vae)),
                **_prefixed("text_encoders.clip_l.transformer.", hf_clip(pipe.text_encoder)),
                **_prefixed("text_encoders.t5xxl.transformer.", pipe.text_encoder_2.state_dict())}
    if family == "pixart":
        return pixart_layout.to_original(pipe.transformer.state_dict())
    raise ValueError(f"no original single-file layout is written for family {family} (only {', '.join(WRITABLE)})")


def write_single_file(family: str, model_dir: Path, target: Path) -> Path:
    """Load the diffusers pipeline at `model_dir` and write it to `target` in `family`'s original layout."""
    import diffusers
    from safetensors.torch import save_file

    from daemon.models.families import FAMILIES

    pipe = getattr(diffusers, FAMILIES[family].pipeline_class).from_pretrained(str(model_dir), local_files_only=True)
    weights = original_state_dict(family, pipe)
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_name(f".{target.name}.partial")
    save_file({k: v.detach().clone() for k, v in weights.items()}, str(partial), metadata={"format": "pt"})
    partial.replace(target)
    return target
