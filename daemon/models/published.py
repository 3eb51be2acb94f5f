"""The published architectures of the real models whose single files load with a shipped config tree.

Layer counts, widths and schedules are facts of each model, as its authors released it; written
here as the keyword arguments of the diffusers and transformers classes that hold them.
daemon/models/make_configs.py turns them into the JSON trees under daemon/models/configs/.
Only what a weight's shape cannot tell is a choice: SD 2.x is the 768×768 v-prediction release.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

Kwargs = dict[str, Any]

SD_BETAS: Kwargs = {"beta_start": 0.00085, "beta_end": 0.012, "beta_schedule": "scaled_linear",
                    "num_train_timesteps": 1000, "steps_offset": 1}

LDM_VAE: Kwargs = {
    "in_channels": 3, "out_channels": 3, "latent_channels": 4, "block_out_channels": [128, 256, 512, 512],
    "down_block_types": ["DownEncoderBlock2D"] * 4, "up_block_types": ["UpDecoderBlock2D"] * 4,
    "layers_per_block": 2, "norm_num_groups": 32, "act_fn": "silu", "sample_size": 512,
    "scaling_factor": 0.18215,
}
FLOW_VAE: Kwargs = {**LDM_VAE, "latent_channels": 16, "sample_size": 1024, "scaling_factor": 1.5305,
                    "shift_factor": 0.0609, "use_quant_conv": False, "use_post_quant_conv": False}
FLUX_VAE: Kwargs = {**FLOW_VAE, "scaling_factor": 0.3611, "shift_factor": 0.1159, "force_upcast": True}
"""FLUX.1's autoencoder: SD3's 16-channel layout with its own latent scale and shift."""

CLIP_L: Kwargs = {"vocab_size": 49408, "hidden_size": 768, "intermediate_size": 3072, "num_hidden_layers": 12,
                  "num_attention_heads": 12, "max_position_embeddings": 77, "hidden_act": "quick_gelu",
                  "projection_dim": 768, "bos_token_id": 49406, "eos_token_id": 49407, "pad_token_id": 49407}
"""OpenAI's CLIP ViT-L/14 text tower: SD 1.x, SDXL's first encoder, SD3's CLIP-L."""
OPEN_CLIP_H: Kwargs = {**CLIP_L, "hidden_size": 1024, "intermediate_size": 4096, "num_attention_heads": 16,
                       "num_hidden_layers": 23, "hidden_act": "gelu", "projection_dim": 512, "pad_token_id": 0}
"""OpenCLIP ViT-H/14's text tower as SD 2.x uses it: 23 of its 24 layers (it reads the penultimate)."""
OPEN_CLIP_BIG_G: Kwargs = {**CLIP_L, "hidden_size": 1280, "intermediate_size": 5120, "num_attention_heads": 20,
                           "num_hidden_layers": 32, "hidden_act": "gelu", "projection_dim": 1280, "pad_token_id": 0}
"""OpenCLIP ViT-bigG/14's text tower: SDXL's second encoder and SD3's CLIP-G."""

T5_XXL: Kwargs = {"vocab_size": 32128, "d_model": 4096, "d_ff": 10240, "d_kv": 64, "num_heads": 64, "num_layers": 24,
                  "num_decoder_layers": 24, "feed_forward_proj": "gated-gelu", "relative_attention_num_buckets": 32,
                  "relative_attention_max_distance": 128, "layer_norm_epsilon": 1e-6, "dropout_rate": 0.1,
                  "is_encoder_decoder": True, "pad_token_id": 0, "eos_token_id": 1,
                  "decoder_start_token_id": 0}
"""Google's T5 v1.1 XXL; FLUX.1 and SD3 use its encoder."""

SD_UNET: Kwargs = {
    "sample_size": 64, "in_channels": 4, "out_channels": 4, "block_out_channels": [320, 640, 1280, 1280],
    "layers_per_block": 2, "down_block_types": ["CrossAttnDownBlock2D"] * 3 + ["DownBlock2D"],
    "up_block_types": ["UpBlock2D"] + ["CrossAttnUpBlock2D"] * 3, "cross_attention_dim": 768,
    "attention_head_dim": 8, "norm_num_groups": 32,
}
SDXL_UNET: Kwargs = {
    **SD_UNET, "sample_size": 128, "block_out_channels": [320, 640, 1280],
    "down_block_types": ["DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"],
    "up_block_types": ["CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"],
    "transformer_layers_per_block": [1, 2, 10], "attention_head_dim": [5, 10, 20], "cross_attention_dim": 2048,
    "use_linear_projection": True, "addition_embed_type": "text_time", "addition_time_embed_dim": 256,
    "projection_class_embeddings_input_dim": 2816,
}
SD3_MEDIUM: Kwargs = {"sample_size": 128, "patch_size": 2, "in_channels": 16, "out_channels": 16, "num_layers": 24,
                      "attention_head_dim": 64, "num_attention_heads": 24, "joint_attention_dim": 4096,
                      "caption_projection_dim": 1536, "pooled_projection_dim": 2048, "pos_embed_max_size": 192}
SD35_LARGE: Kwargs = {**SD3_MEDIUM, "num_layers": 38, "num_attention_heads": 38, "caption_projection_dim": 2432,
                      "qk_norm": "rms_norm"}
SD35_MEDIUM: Kwargs = {**SD3_MEDIUM, "qk_norm": "rms_norm", "pos_embed_max_size": 384,
                       "dual_attention_layers": list(range(13))}
FLUX_DEV: Kwargs = {"patch_size": 1, "in_channels": 64, "num_layers": 19, "num_single_layers": 38,
                    "attention_head_dim": 128, "num_attention_heads": 24, "joint_attention_dim": 4096,
                    "pooled_projection_dim": 768, "guidance_embeds": True, "axes_dims_rope": [16, 56, 56]}
FLUX_SCHNELL: Kwargs = {**FLUX_DEV, "guidance_embeds": False}
"""FLUX.1 [schnell]: dev's transformer without the guidance embedding (timestep-distilled)."""
FLOW_SHIFTS: Kwargs = {"base_image_seq_len": 256, "max_image_seq_len": 4096, "base_shift": 0.5, "max_shift": 1.15}


@dataclass(frozen=True)
class Component:
    library: str
    class_name: str
    kwargs: Kwargs


@dataclass(frozen=True)
class Tokenizer:
    """CLIP's byte-pair tokenizer."""

    pad_token: str
    """OpenAI's CLIP pads with its end token; OpenCLIP pads with id 0 ("!")."""


@dataclass(frozen=True)
class T5Vocabulary:
    """T5's SentencePiece tokenizer (32,000 pieces and 100 sentinels), as FLUX.1 and SD3 use it."""

    max_length: int = 512


@dataclass(frozen=True)
class Tree:
    pipeline_class: str
    components: dict[str, Component | Tokenizer | T5Vocabulary]
    denoisers: dict[str, Kwargs] = field(default_factory=dict)
    """Other published denoisers the tree's weights may have (the variant → its config), kept in
    folders `<denoiser>-<variant>` beside the default one and chosen by the file's shapes."""
    schedulers: dict[str, Component] = field(default_factory=dict)
    """A variant's own scheduler where it differs (FLUX.1 schnell's), in `scheduler-<variant>`."""
    extra_index: Kwargs = field(default_factory=dict)


def _clip(kwargs: Kwargs, projection: bool = False) -> Component:
    return Component("transformers", "CLIPTextModelWithProjection" if projection else "CLIPTextModel", kwargs)


SD_INDEX: Kwargs = {"requires_safety_checker": False, "safety_checker": [None, None],
                    "feature_extractor": [None, None], "image_encoder": [None, None]}
"""SD 1.x/2.x pipelines' model_index entries beyond their components: no safety checker."""
EULER = Component("diffusers", "EulerDiscreteScheduler", {**SD_BETAS, "prediction_type": "epsilon"})
FLOW = Component("diffusers", "FlowMatchEulerDiscreteScheduler", {"num_train_timesteps": 1000, "shift": 3.0})
FLUX_DEV_FLOW = Component("diffusers", "FlowMatchEulerDiscreteScheduler",
                          {**FLOW.kwargs, **FLOW_SHIFTS, "use_dynamic_shifting": True})
"""FLUX.1 [dev] shifts its schedule by the image's size; [schnell] runs the plain one (shift 1)."""
FLUX_SCHNELL_FLOW = Component("diffusers", "FlowMatchEulerDiscreteScheduler",
                              {**FLOW.kwargs, **FLOW_SHIFTS, "shift": 1.0, "use_dynamic_shifting": False})

TREES: dict[str, Tree] = {
    "sd15": Tree("StableDiffusionPipeline", {
        "unet": Component("diffusers", "UNet2DConditionModel", SD_UNET),
        "vae": Component("diffusers", "AutoencoderKL", LDM_VAE),
        "text_encoder": _clip(CLIP_L), "tokenizer": Tokenizer("<|endoftext|>"), "scheduler": EULER,
    }, extra_index=SD_INDEX),
    "sd2": Tree("StableDiffusionPipeline", {
        "unet": Component("diffusers", "UNet2DConditionModel", {
            **SD_UNET, "sample_size": 96, "attention_head_dim": [5, 10, 20, 20], "cross_attention_dim": 1024,
            "use_linear_projection": True}),
        "vae": Component("diffusers", "AutoencoderKL", {**LDM_VAE, "sample_size": 768}),
        "text_encoder": _clip(OPEN_CLIP_H), "tokenizer": Tokenizer("!"),
        "scheduler": Component("diffusers", "EulerDiscreteScheduler", {**SD_BETAS, "prediction_type": "v_prediction"}),
    }, extra_index=SD_INDEX),
    "sdxl": Tree("StableDiffusionXLPipeline", {
        "unet": Component("diffusers", "UNet2DConditionModel", SDXL_UNET),
        "vae": Component("diffusers", "AutoencoderKL", {**LDM_VAE, "sample_size": 1024, "scaling_factor": 0.13025,
                                                        "force_upcast": True}),
        "text_encoder": _clip(CLIP_L), "tokenizer": Tokenizer("<|endoftext|>"),
        "text_encoder_2": _clip(OPEN_CLIP_BIG_G, projection=True), "tokenizer_2": Tokenizer("!"),
        "scheduler": Component("diffusers", "EulerDiscreteScheduler",
                               {**SD_BETAS, "prediction_type": "epsilon", "timestep_spacing": "leading"}),
    }, extra_index={"force_zeros_for_empty_prompt": True, "feature_extractor": [None, None],
                    "image_encoder": [None, None]}),
    "sd3": Tree("StableDiffusion3Pipeline", {
        "transformer": Component("diffusers", "SD3Transformer2DModel", SD3_MEDIUM),
        "vae": Component("diffusers", "AutoencoderKL", FLOW_VAE),
        "text_encoder": _clip(CLIP_L, projection=True), "tokenizer": Tokenizer("<|endoftext|>"),
        "text_encoder_2": _clip(OPEN_CLIP_BIG_G, projection=True), "tokenizer_2": Tokenizer("!"),
        "text_encoder_3": Component("transformers", "T5EncoderModel", T5_XXL), "tokenizer_3": T5Vocabulary(512),
        "scheduler": FLOW,
    }, denoisers={"sd3.5-large": SD35_LARGE, "sd3.5-medium": SD35_MEDIUM},
        extra_index={"feature_extractor": [None, None], "image_encoder": [None, None]}),
    "flux": Tree("FluxPipeline", {
        "transformer": Component("diffusers", "FluxTransformer2DModel", FLUX_DEV),
        "vae": Component("diffusers", "AutoencoderKL", FLUX_VAE),
        "text_encoder": _clip(CLIP_L), "tokenizer": Tokenizer("<|endoftext|>"),
        "text_encoder_2": Component("transformers", "T5EncoderModel", T5_XXL), "tokenizer_2": T5Vocabulary(512),
        "scheduler": FLUX_DEV_FLOW,
    }, denoisers={"schnell": FLUX_SCHNELL}, schedulers={"schnell": FLUX_SCHNELL_FLOW},
        extra_index={"feature_extractor": [None, None], "image_encoder": [None, None]}),
}
"""Family → the tree shipped for its real single files. SD3 runs with or without T5-XXL (most of
its published files are without it): a file that lacks it runs without it (shipped.OPTIONAL)."""
