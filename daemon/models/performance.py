"""What the worker does to a loaded pipeline to make it fast on its device: the decision only.

A pure function of the `[performance]` settings, the model's family and name, the device and the
dtype it loads in (no torch here: the daemon and the tests read it without loading anything).
daemon.worker.speed carries the plan out on the pipeline.

Precision stays `model.dtype`'s: "auto" is float16 on CUDA (bfloat16 for SD3 and Flux, whose
transformers overflow in float16) and float32 on the CPU (daemon.models.families). The rest:

- attention through PyTorch's scaled-dot-product attention (SDPA, diffusers' `AttnProcessor2_0`
  and its joint/Flux kin) everywhere: the classic processor is replaced if anything set it;
- channels-last weights for the convolutional parts (the UNet and the VAE; a transformer family's
  VAE only), on CUDA unless `channels_last` says otherwise;
- VAE slicing when a call holds more images than `vae_slicing_above_batch`, tiling above
  `vae_tiling_above_pixels` (both decided per call: daemon.worker.speed.vae_for_call);
- `torch.compile` of the denoiser for the models named in `compile_models`, static shapes, so each
  (images, width, height, guidance on/off) compiles once and is reused;
- a warm-up generation at load (on CUDA unless `warmup` says otherwise).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from daemon.models.families import FAMILIES

FAST_ATTENTION = ("AttnProcessor2_0", "JointAttnProcessor2_0", "FluxAttnProcessor")
"""diffusers' processors that run PyTorch's SDPA (Flux's through diffusers' dispatcher, native by default)."""
SLOW_ATTENTION = "AttnProcessor"
"""The classic processor: attention as explicit matmul + softmax, the slow path SDPA replaces."""


@dataclass(frozen=True)
class Settings:
    """The `[performance]` section as the worker gets it in its spec."""

    channels_last: str
    vae_slicing_above_batch: int
    vae_tiling_above_pixels: int
    warmup: str
    warmup_steps: int
    compile_models: tuple[str, ...]
    compile_mode: str
    compile_backend: str
    compile_max_shapes: int

    @classmethod
    def from_spec(cls, fields: Mapping[str, object] | None = None) -> Settings:
        """From the worker spec's `performance` table over the shipped defaults, each value held to
        its rule in config/default.toml; ValueError names the key and says why (the daemon checked
        its config already: this guards a spec made some other way)."""
        from daemon.config import defaults
        from daemon.schema import shipped_rules

        shipped: dict[str, object] = dict(defaults().values["performance"])
        given = dict(fields or {})
        unknown = sorted(set(given) - set(shipped))
        if unknown:
            raise ValueError(f"performance.{unknown[0]}: unknown setting; known: {', '.join(shipped)}")
        rules = shipped_rules()
        values: dict[str, object] = {}
        for name, default in shipped.items():
            value = given.get(name, default)
            if type(value) is not type(default):
                raise ValueError(f"performance.{name}: must be {type(default).__name__}, not {value!r}")
            rule = rules.get(f"performance.{name}")
            reason = rule.check(value) if rule else None
            if reason:
                raise ValueError(f"performance.{name}: {reason} (got {value!r})")
            values[name] = tuple(value) if isinstance(value, list) else value
        return cls(**values)  # type: ignore[arg-type]


@dataclass(frozen=True)
class Plan:
    """What daemon.worker.speed does to one loaded pipeline."""

    dtype: str
    channels_last: tuple[str, ...]
    """The components stored channels-last ("unet", "vae")."""
    compile: bool
    warmup: bool
    slicing_above_batch: int
    tiling_above_pixels: int

    def summary(self) -> dict[str, object]:
        """For the worker's `model` event."""
        return {"channels_last": list(self.channels_last), "compile": self.compile, "warmup": self.warmup}


def _on(when: str, device: str) -> bool:
    return when == "always" or (when == "cuda" and device.startswith("cuda"))


def choose_dtype(requested: str, family: str, device: str) -> str:
    """The dtype a model loads in: `requested` unless "auto", then the family's for the device."""
    return FAMILIES[family].default_dtype(device) if requested == "auto" else requested


def plan(settings: Settings, model_name: str, family: str, device: str, requested_dtype: str = "auto") -> Plan:
    """The plan for model `model_name` of `family` loaded on `device` (the worker's "cpu" or "cuda")."""
    dtype = choose_dtype(requested_dtype, family, device)
    layout = ("unet", "vae") if denoiser_name(family) == "unet" else ("vae",)
    return Plan(dtype=dtype,
                channels_last=layout if _on(settings.channels_last, device) else (),
                compile=model_name in settings.compile_models,
                warmup=_on(settings.warmup, device),
                slicing_above_batch=settings.vae_slicing_above_batch,
                tiling_above_pixels=settings.vae_tiling_above_pixels)


def denoiser_name(family: str) -> str:
    """The pipeline attribute of the family's denoiser: `unet` or `transformer`."""
    return "transformer" if family in ("sd3", "flux", "pixart") else "unet"
