"""Tiny random pipelines of every family, built offline from code (seeded weights, local tokenizers).

Each is a few MB and makes a 64×64 image in well under a second on a CPU: the images are noise,
but every family's real loading, generation, batching and cancel path runs. Shapes follow the
families' rules (docs/models.md; ../shared/FACTS.md has the constraints that bite).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from diffusers import AutoencoderKL, DiffusionPipeline
    from transformers import (
        CLIPTextModel,
        CLIPTextModelWithProjection,
        CLIPTokenizer,
        PreTrainedTokenizerFast,
        T5EncoderModel,
    )

CLIP_TOKENS = 77
T5_TOKENS = 512
CLIP_L_WIDTH = 32
CLIP_G_WIDTH = 48
"""SDXL's and SD3's two CLIP encoders differ in width as the real ones do (768, 1280): diffusers'
single-file loader tells them apart in a checkpoint by that width alone."""


PRINTABLE_BYTES = (*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1))


def byte_symbols() -> dict[int, str]:
    """GPT-2's byte-to-symbol table: a printable byte stands for itself, the others for chr(256 + n).
    Ordered as CLIP's vocabulary lists them: the printable bytes first."""
    table = {byte: chr(byte) for byte in PRINTABLE_BYTES}
    others = (byte for byte in range(256) if byte not in table)
    table.update({byte: chr(256 + n) for n, byte in enumerate(others)})
    return table


def byte_level_vocab() -> dict[str, int]:
    """The byte symbols in byte order, each also with `</w>`, plus CLIP's two specials (no merges)."""
    table = byte_symbols()
    symbols = [table[byte] for byte in range(256)]
    vocab = {s: i for i, s in enumerate(symbols)}
    vocab.update({s + "</w>": 256 + i for i, s in enumerate(symbols)})
    vocab["<|startoftext|>"] = len(vocab)
    vocab["<|endoftext|>"] = len(vocab)
    return vocab


def clip_tokenizer() -> CLIPTokenizer:
    from transformers import CLIPTokenizer

    return CLIPTokenizer(vocab=byte_level_vocab(), merges=[], model_max_length=CLIP_TOKENS)


def clip_encoder(hidden: int, projection: int | None = None, layers: int = 2) -> CLIPTextModel:
    """A CLIP text encoder; with `projection`, the projecting one SDXL's second and SD3's use."""
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    vocab = byte_level_vocab()
    config = CLIPTextConfig(
        vocab_size=len(vocab), hidden_size=hidden, intermediate_size=hidden + 5, num_attention_heads=4,
        num_hidden_layers=layers, max_position_embeddings=CLIP_TOKENS, projection_dim=projection or hidden,
        bos_token_id=vocab["<|startoftext|>"], eos_token_id=vocab["<|endoftext|>"],
        pad_token_id=vocab["<|endoftext|>"])
    model: CLIPTextModel | CLIPTextModelWithProjection = (
        CLIPTextModelWithProjection(config) if projection else CLIPTextModel(config))
    return model


def t5_tokenizer(max_tokens: int = T5_TOKENS) -> PreTrainedTokenizerFast:
    """A T5 tokenizer made here: a Unigram model over single characters (any text tokenizes)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors
    from transformers import T5TokenizerFast

    pieces = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), ("▁", -1.0)]
    pieces += [(chr(c), -2.0) for c in range(ord(" ") + 1, ord("~") + 1)]
    tok = Tokenizer(models.Unigram(pieces, unk_id=2))
    tok.pre_tokenizer = pre_tokenizers.Metaspace()
    tok.decoder = decoders.Metaspace()
    tok.post_processor = processors.TemplateProcessing(single="$A </s>", special_tokens=[("</s>", 1)])
    return T5TokenizerFast(tokenizer_object=tok, pad_token="<pad>", eos_token="</s>", unk_token="<unk>",
                           model_max_length=max_tokens, extra_ids=0)


def t5_encoder(width: int, vocab: int) -> T5EncoderModel:
    from transformers import T5Config, T5EncoderModel

    return T5EncoderModel(T5Config(vocab_size=vocab, d_model=width, d_ff=width + 5, d_kv=8, num_layers=2,
                                   num_heads=4, relative_attention_num_buckets=8, decoder_start_token_id=0,
                                   pad_token_id=0, eos_token_id=1))


def vae(latent_channels: int) -> AutoencoderKL:
    """A 4-block VAE (8× like the real ones: fewer blocks make the VAE's attention quadratic in pixels)."""
    from diffusers import AutoencoderKL

    flow = latent_channels == 16  # SD3 and Flux: no quant convs, shifted latents
    return AutoencoderKL(
        in_channels=3, out_channels=3, latent_channels=latent_channels, block_out_channels=(32, 32, 32, 32),
        down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
        layers_per_block=1, norm_num_groups=32, sample_size=64,
        scaling_factor=1.5305 if flow else 0.18215, shift_factor=0.0609 if flow else None,
        use_quant_conv=not flow, use_post_quant_conv=not flow)


def tiny_sdxl() -> DiffusionPipeline:
    from diffusers import EulerDiscreteScheduler, StableDiffusionXLPipeline, UNet2DConditionModel

    time_dim, projection = 8, 32
    clip_l, clip_g = CLIP_L_WIDTH, CLIP_G_WIDTH
    unet = UNet2DConditionModel(
        sample_size=8, in_channels=4, out_channels=4, block_out_channels=(32, 64), layers_per_block=1,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"), up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=clip_l + clip_g, attention_head_dim=(2, 4), norm_num_groups=32, use_linear_projection=True,
        addition_embed_type="text_time", addition_time_embed_dim=time_dim,
        projection_class_embeddings_input_dim=6 * time_dim + projection, transformer_layers_per_block=(1, 1))
    scheduler = EulerDiscreteScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                                       num_train_timesteps=1000, steps_offset=1, prediction_type="epsilon",
                                       timestep_spacing="leading")
    return StableDiffusionXLPipeline(
        vae=vae(4), text_encoder=clip_encoder(clip_l), text_encoder_2=clip_encoder(clip_g, projection),
        tokenizer=clip_tokenizer(), tokenizer_2=clip_tokenizer(), unet=unet, scheduler=scheduler,
        force_zeros_for_empty_prompt=True, add_watermarker=False)


def tiny_sd3() -> DiffusionPipeline:
    import torch
    from diffusers import FlowMatchEulerDiscreteScheduler, SD3Transformer2DModel, StableDiffusion3Pipeline

    t5_tok = t5_tokenizer(256)
    t5_width = 96  # ≥ both CLIPs side by side: the pipeline pads their joint output to T5's width
    transformer = SD3Transformer2DModel(
        sample_size=8, patch_size=2, in_channels=16, out_channels=16, num_layers=2, attention_head_dim=8,
        num_attention_heads=4, joint_attention_dim=t5_width, caption_projection_dim=32,
        pooled_projection_dim=CLIP_L_WIDTH + CLIP_G_WIDTH, pos_embed_max_size=32)
    clip_l = clip_encoder(CLIP_L_WIDTH, CLIP_L_WIDTH)
    with torch.no_grad():  # diffusers' SD3 single-file loader gives CLIP-L an identity projection: so does this
        clip_l.text_projection.weight.copy_(torch.eye(CLIP_L_WIDTH))
    return StableDiffusion3Pipeline(
        transformer=transformer, scheduler=FlowMatchEulerDiscreteScheduler(shift=3.0), vae=vae(16),
        text_encoder=clip_l, tokenizer=clip_tokenizer(),
        text_encoder_2=clip_encoder(CLIP_G_WIDTH, CLIP_G_WIDTH), tokenizer_2=clip_tokenizer(),
        text_encoder_3=t5_encoder(t5_width, len(t5_tok)), tokenizer_3=t5_tok)


def tiny_flux() -> DiffusionPipeline:
    from diffusers import FlowMatchEulerDiscreteScheduler, FluxPipeline, FluxTransformer2DModel

    t5_tok = t5_tokenizer(512)
    transformer = FluxTransformer2DModel(
        patch_size=1, in_channels=64, num_layers=1, num_single_layers=1, attention_head_dim=16,
        num_attention_heads=2, joint_attention_dim=32, pooled_projection_dim=32, guidance_embeds=True,
        axes_dims_rope=(4, 6, 6))
    scheduler = FlowMatchEulerDiscreteScheduler(shift=3.0, use_dynamic_shifting=True, base_shift=0.5, max_shift=1.15,
                                                base_image_seq_len=256, max_image_seq_len=4096)
    return FluxPipeline(transformer=transformer, scheduler=scheduler, vae=vae(16),
                        text_encoder=clip_encoder(32), tokenizer=clip_tokenizer(),
                        text_encoder_2=t5_encoder(32, len(t5_tok)), tokenizer_2=t5_tok)


def tiny_pixart() -> DiffusionPipeline:
    from diffusers import DPMSolverMultistepScheduler, PixArtSigmaPipeline, PixArtTransformer2DModel

    t5_tok = t5_tokenizer(300)
    transformer = PixArtTransformer2DModel(
        num_attention_heads=2, attention_head_dim=8, in_channels=4, out_channels=8, num_layers=2,
        cross_attention_dim=16, sample_size=8, patch_size=2, caption_channels=32, norm_type="ada_norm_single",
        use_additional_conditions=False)
    return PixArtSigmaPipeline(tokenizer=t5_tok, text_encoder=t5_encoder(32, len(t5_tok)), vae=vae(4),
                               transformer=transformer, scheduler=DPMSolverMultistepScheduler())


FAMILY_BUILDERS: dict[str, tuple[str, Callable[[], DiffusionPipeline]]] = {
    "tiny-sdxl": ("sdxl", tiny_sdxl),
    "tiny-sd3": ("sd3", tiny_sd3),
    "tiny-flux": ("flux", tiny_flux),
    "tiny-pixart": ("pixart", tiny_pixart),
}
"""Built-in name → (family, builder) for the families beyond SD 1.x (those are in builders.SHAPES)."""
