"""The model families the worker loads, and the limits each one puts on a job.

A pure table: no torch, no diffusers (the daemon validates submits with it before queueing; the
worker maps class names to the classes it imports). Figures are the families' published ones.

Guidance: `cfg` families run classifier-free guidance (a negative prompt is the unconditional
branch); Flux is guidance-*distilled*: `guidance` feeds the transformer's guidance embedding
(Flux dev-like). A Flux model without that embedding (schnell-like, `guidance_embeds` false) ignores
the value: the worker says so in its model event (`guidance: "none"`) rather than refusing jobs
that carry the configured default. Flux takes no negative prompt: one is refused.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from dataclasses import dataclass
from typing import Literal

FAMILY_NAMES = ("sd15", "sd2", "sdxl", "sd3", "flux", "pixart")
SCHEDULERS = ("euler", "ddim", "dpm")
DTYPES = ("auto", "float32", "float16", "bfloat16")

Guidance = Literal["cfg", "embedded"]


@dataclass(frozen=True)
class Encoder:
    name: str          # the pipeline's text encoder attribute
    kind: str          # "clip" or "t5": what the daemon counts tokens with
    max_tokens: int    # what the pipeline reads of a prompt; the rest is dropped

    @property
    def tokenizer(self) -> str:
        """The pipeline's folder (and attribute) of this encoder's tokenizer: text_encoder_2 → tokenizer_2."""
        return self.name.replace("text_encoder", "tokenizer", 1)


@dataclass(frozen=True)
class Family:
    name: str
    pipeline_class: str
    scheduler_class: str            # the default; "euler" selects it
    size_multiple: int              # width and height must be multiples of this
    guidance: Guidance
    negative_prompt: bool
    encoders: tuple[Encoder, ...]
    cuda_dtype: str                 # the default dtype on CUDA; float32 on the CPU
    schedulers: tuple[str, ...]     # the scheduler names this family runs with
    label: str

    def default_dtype(self, device: str) -> str:
        return self.cuda_dtype if device.startswith("cuda") else "float32"


CLIP = Encoder("text_encoder", "clip", 77)
CLIP_2 = Encoder("text_encoder_2", "clip", 77)

FAMILIES: dict[str, Family] = {family.name: family for family in (
    Family("sd15", "StableDiffusionPipeline", "EulerDiscreteScheduler", 8, "cfg", True, (CLIP,),
           "float16", SCHEDULERS, "Stable Diffusion 1.x"),
    Family("sd2", "StableDiffusionPipeline", "EulerDiscreteScheduler", 8, "cfg", True, (CLIP,),
           "float16", SCHEDULERS, "Stable Diffusion 2.x"),
    Family("sdxl", "StableDiffusionXLPipeline", "EulerDiscreteScheduler", 8, "cfg", True, (CLIP, CLIP_2),
           "float16", SCHEDULERS, "Stable Diffusion XL"),
    Family("sd3", "StableDiffusion3Pipeline", "FlowMatchEulerDiscreteScheduler", 16, "cfg", True,
           (CLIP, CLIP_2, Encoder("text_encoder_3", "t5", 256)), "bfloat16", ("euler",), "Stable Diffusion 3 / 3.5"),
    Family("flux", "FluxPipeline", "FlowMatchEulerDiscreteScheduler", 16, "embedded", False,
           (CLIP, Encoder("text_encoder_2", "t5", 512)), "bfloat16", ("euler",), "Flux.1"),
    Family("pixart", "PixArtSigmaPipeline", "DPMSolverMultistepScheduler", 16, "cfg", True,
           (Encoder("text_encoder", "t5", 300),), "float16", SCHEDULERS, "PixArt-Σ"),
)}

PIPELINE_FAMILIES: dict[str, str] = {
    "StableDiffusionPipeline": "sd15",
    "StableDiffusionXLPipeline": "sdxl",
    "StableDiffusion3Pipeline": "sd3",
    "FluxPipeline": "flux",
    "PixArtSigmaPipeline": "pixart",
}
"""model_index.json `_class_name` → family (SD 2.x shares SD 1.x's class: told apart by its text width)."""

BUILT_IN: dict[str, str] = {"tiny": "sd15", "sd15-shaped": "sd15", "tiny-sdxl": "sdxl", "tiny-sd3": "sd3",
                            "tiny-flux": "flux", "tiny-pixart": "pixart"}
"""Built-in model name → its family (daemon.models.builders makes them): the daemon knows a built-in's
family, and so its limits, before the model is first built."""

SIZE_STEP = min(f.size_multiple for f in FAMILIES.values())
"""Every family's width and height are multiples of this; a model's own family may ask more."""


def family(name: str) -> Family:
    """The family `name`; KeyError names the known ones."""
    try:
        return FAMILIES[name]
    except KeyError:
        raise KeyError(f"unknown model family {name!r} (known: {', '.join(FAMILY_NAMES)})") from None


def check_params(family_name: str, params: Mapping[str, object]) -> list[tuple[str, str]]:
    """What in a job's `params` the family cannot run, as (field, reason); empty when it can.

    Looks at width, height, negative_prompt and scheduler when present (values already typed and
    range-checked by the caller)."""
    fam = family(family_name)
    problems: list[tuple[str, str]] = []
    for field in ("width", "height"):
        value = params.get(field)
        if isinstance(value, int) and value % fam.size_multiple:
            problems.append((field, f"must be a multiple of {fam.size_multiple} for {fam.label} models "
                                    f"({family_name}); {value} is not"))
    negative = params.get("negative_prompt")
    if not fam.negative_prompt and isinstance(negative, str) and negative.strip():
        problems.append(("negative_prompt", f"{fam.label} models ({family_name}) take no negative prompt"))
    scheduler = params.get("scheduler")
    if isinstance(scheduler, str) and scheduler and scheduler not in fam.schedulers:
        problems.append(("scheduler", f"{fam.label} models ({family_name}) run with "
                                      f"{', '.join(fam.schedulers)}, not {scheduler}"))
    return problems


def token_warnings(family_name: str, prompt_token_counts: Mapping[str, int],
                   estimated: Collection[str] = ()) -> list[str]:
    """A warning for each text encoder of the family that reads fewer tokens than the prompt has.

    `prompt_token_counts` maps an encoder kind ("clip", "t5") to the prompt's token count with that
    kind's tokenizer (special tokens included); kinds not given are not judged. Kinds in
    `estimated` were counted without their tokenizer: their warning says "about"."""
    fam = family(family_name)
    warnings: list[str] = []
    seen: set[tuple[str, int]] = set()
    for encoder in fam.encoders:
        count = prompt_token_counts.get(encoder.kind)
        if count is None or count <= encoder.max_tokens or (encoder.kind, encoder.max_tokens) in seen:
            continue
        seen.add((encoder.kind, encoder.max_tokens))
        about = "about " if encoder.kind in estimated else ""
        kind = encoder.kind.upper()
        warnings.append(f"prompt is {about}{count} {kind} tokens; the {fam.label} {kind} text encoder reads the "
                        f"first {encoder.max_tokens}, the rest is ignored")
    return warnings
