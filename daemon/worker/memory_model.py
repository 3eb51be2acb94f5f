"""How much memory a job needs, learned from the peaks the worker measures.

Activation memory grows with the pixels of each image, so the worker's peak per image is fitted
as a straight line over pixel counts. Nothing is guessed before measurements exist: with one
size seen, only that size is estimated; from two sizes on, any size is.
"""

from __future__ import annotations

import statistics
from collections.abc import Callable
from typing import Any

MARGIN = 1.25


class MemoryModel:
    def __init__(self) -> None:
        self.peaks: dict[int, int] = {}

    def observe(self, peak: dict[str, Any] | None) -> None:
        if not peak or peak.get("bytes_per_image", 0) <= 0 or peak.get("pixels", 0) <= 0:
            return
        pixels = int(peak["pixels"])
        self.peaks[pixels] = max(self.peaks.get(pixels, 0), int(peak["bytes_per_image"]))

    def need(self, width: int, height: int, images: int = 1) -> int | None:
        """Bytes `images` images of this size are expected to need, or None when unknown."""
        pixels = width * height
        if pixels in self.peaks:
            per_image = float(self.peaks[pixels])
        elif len(self.peaks) >= 2:
            fit = statistics.linear_regression(list(self.peaks), list(self.peaks.values()))
            per_image = max(fit.intercept + fit.slope * pixels, max(self.peaks.values()) * pixels / max(self.peaks))
        else:
            return None
        return int(per_image * images * MARGIN)

    def refusal(self, width: int, height: int, capacity: int | None) -> str | None:
        """Why a job of this size can never run here, or None."""
        need = self.need(width, height)
        if need is None or not capacity or need <= capacity:
            return None
        return (f"a {width}x{height} image needs about {need / 2**30:.2f} GiB (learned from measured peaks), "
                f"more than the {capacity / 2**30:.2f} GiB this worker can use; reduce width and height")

    def image_budget(self, width: int, height: int, capacity: int | None) -> int | None:
        """How many images of this size fit in one pipeline call, or None when unknown."""
        need = self.need(width, height)
        if need is None or not capacity:
            return None
        return max(1, capacity // need)


class AnyDevice:
    """The queue's view of every worker's memory model: a size is refused at submit only when no
    device can ever take it (each worker's own model and capacity judge its device)."""

    def __init__(self, devices: list[tuple[str, MemoryModel, Callable[[], int | None]]]) -> None:
        """`devices`: (worker name, its memory model, the bytes it can use now or None)."""
        self.devices = devices

    def refusal(self, width: int, height: int, capacity: int | None = None) -> str | None:
        """Why a job of this size fits no device, or None (`capacity` is unused: each device has its own)."""
        reasons = [(name, memory.refusal(width, height, cap())) for name, memory, cap in self.devices]
        if any(reason is None for _, reason in reasons):
            return None
        if len(reasons) == 1:
            return reasons[0][1]
        return f"no worker can take it: {'; '.join(f'{name}: {reason}' for name, reason in reasons)}"
