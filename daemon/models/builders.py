"""Built-in models with seeded random weights, built offline from code on first use.

`tiny` (SD 1.x-shaped) exercises the whole real stack in seconds on a CPU (its images are noise);
`tiny-sdxl`, `tiny-sd3`, `tiny-flux` and `tiny-pixart` do the same for the other families
(daemon.models.tiny); `sd15-shaped` has SD 1.5's sizes for benchmarks. Each is saved in the
diffusers layout and loaded through the ordinary `from_pretrained(..., local_files_only=True)` path.
"""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

from daemon.models.families import BUILT_IN
from daemon.models.tiny import CLIP_TOKENS as MAX_TOKENS
from daemon.models.tiny import FAMILY_BUILDERS, byte_level_vocab


@dataclass(frozen=True)
class Shape:
    unet_channels: tuple[int, ...]
    unet_layers: int
    attention_head_dim: int
    vae_channels: tuple[int, ...]
    text_hidden: int
    text_layers: int
    text_heads: int
    text_intermediate: int
    norm_groups: int
    down_blocks: tuple[str, ...]
    up_blocks: tuple[str, ...]


SHAPES = {
    # Attention only at the lower resolution: at 512² the top level would attend over 4096 tokens.
    "tiny": Shape((32, 64), 1, 8, (32, 32, 32, 32), 32, 2, 4, 37, 32,
                  ("DownBlock2D", "CrossAttnDownBlock2D"), ("CrossAttnUpBlock2D", "UpBlock2D")),
    "sd15-shaped": Shape((320, 640, 1280, 1280), 2, 8, (128, 256, 512, 512), 768, 12, 12, 3072, 32,
                         ("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
                         ("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3),
}


def build(name: str, target: Path, seed: int = 0) -> Path:
    """Build model `name` into `target` once (concurrent builders wait on a lock)."""
    if name not in BUILT_IN:
        raise KeyError(f"no built-in model {name!r} (built in: {', '.join(BUILT_IN)})")
    target.parent.mkdir(parents=True, exist_ok=True)
    lock_path = target.parent / f".{target.name}.lock"
    with open(lock_path, "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if (target / "model_index.json").is_file():
            return target
        staging = Path(tempfile.mkdtemp(prefix=f".{target.name}-", dir=target.parent))
        try:
            if name in SHAPES:
                _build_into(SHAPES[name], staging, seed)
            else:
                _build_family(name, staging, seed)
            (staging / "sai-model.json").write_text(json.dumps({"name": name, "seed": seed,
                                                                "family": BUILT_IN[name]}))
            if target.exists():
                shutil.rmtree(target)
            os.replace(staging, target)
        finally:
            if staging.exists():
                shutil.rmtree(staging, ignore_errors=True)
    return target


def _build_family(name: str, out: Path, seed: int) -> None:
    import torch

    torch.manual_seed(seed)
    FAMILY_BUILDERS[name][1]().save_pretrained(out, safe_serialization=True)


def _build_into(shape: Shape, out: Path, seed: int) -> None:
    import torch
    from diffusers import AutoencoderKL, EulerDiscreteScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    torch.manual_seed(seed)
    unet = UNet2DConditionModel(
        sample_size=64,
        in_channels=4,
        out_channels=4,
        block_out_channels=shape.unet_channels,
        layers_per_block=shape.unet_layers,
        down_block_types=shape.down_blocks,
        up_block_types=shape.up_blocks,
        cross_attention_dim=shape.text_hidden,
        attention_head_dim=shape.attention_head_dim,
        norm_num_groups=shape.norm_groups,
    )
    vae = AutoencoderKL(
        in_channels=3,
        out_channels=3,
        latent_channels=4,
        block_out_channels=shape.vae_channels,
        down_block_types=("DownEncoderBlock2D",) * len(shape.vae_channels),
        up_block_types=("UpDecoderBlock2D",) * len(shape.vae_channels),
        layers_per_block=1 if shape.unet_layers == 1 else 2,
        norm_num_groups=shape.norm_groups,
        sample_size=512,
    )
    vocab = byte_level_vocab()
    text_encoder = CLIPTextModel(CLIPTextConfig(
        vocab_size=len(vocab),
        hidden_size=shape.text_hidden,
        intermediate_size=shape.text_intermediate,
        num_attention_heads=shape.text_heads,
        num_hidden_layers=shape.text_layers,
        max_position_embeddings=MAX_TOKENS,
        bos_token_id=vocab["<|startoftext|>"],
        eos_token_id=vocab["<|endoftext|>"],
        pad_token_id=vocab["<|endoftext|>"],
    ))
    tokenizer = CLIPTokenizer(vocab=vocab, merges=[], model_max_length=MAX_TOKENS)
    scheduler = EulerDiscreteScheduler(
        beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
        num_train_timesteps=1000, steps_offset=1, prediction_type="epsilon",
    )
    pipe = StableDiffusionPipeline(
        vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet, scheduler=scheduler,
        safety_checker=None, feature_extractor=None, requires_safety_checker=False,
    )
    pipe.save_pretrained(out, safe_serialization=True)
