"""The arguments of one pipeline call, per family (what each family's `__call__` takes differs).

- Every family: prompts, size, steps, one seeded generator per image, numpy output, and a step
  callback (progress, and cancel by raising from it: no VAE decode of a cancelled chunk).
- Classifier-free guidance families get `guidance_scale` and the negative prompts; Flux gets no
  negative prompt (the daemon refuses one) and its guidance only when the transformer embeds it.
- PixArt-Σ takes the older `callback(step, timestep, latents)` and would snap sizes to its aspect
  bins: binning is off, so the image has the size the job asked for.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

StepHook = Callable[[int], None]
"""Called with the 0-based index of each finished step; raising aborts the call."""


def call_arguments(family: str, guidance_mode: str, items: list[dict[str, Any]], width: int, height: int,
                   steps: int, guidance: float, generators: list[Any], on_step: StepHook) -> dict[str, Any]:
    arguments: dict[str, Any] = {
        "prompt": [item["prompt"] for item in items], "width": width, "height": height,
        "num_inference_steps": steps, "generator": generators, "output_type": "np",
    }
    if guidance_mode == "cfg":
        arguments["guidance_scale"] = guidance
        arguments["negative_prompt"] = [item.get("negative_prompt") or "" for item in items]
    elif guidance_mode == "embedded":
        arguments["guidance_scale"] = guidance
    if family == "pixart":
        def legacy(step: int, timestep: Any, latents: Any) -> None:
            on_step(step)

        arguments.update(callback=legacy, callback_steps=1, use_resolution_binning=False)
    else:
        def modern(pipe: Any, step: int, timestep: Any, kwargs: dict[str, Any]) -> dict[str, Any]:
            on_step(step)
            return kwargs

        arguments["callback_on_step_end"] = modern
    return arguments
