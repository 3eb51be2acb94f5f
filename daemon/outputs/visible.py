"""The visible watermark: text (a template), a logo image, or a tiled text pattern, drawn with OpenCV.

A mark is rendered once into a *stamp*: colour (RGB, float32) and coverage (alpha 0..1), rotated by
`angle`, sized by `scale` (stamp height as a fraction of the image's shorter side). Text is a light
fill inside a dark outline so it reads on light and dark images alike. The stamp is alpha-blended
at `opacity`, at one of nine anchors with a margin, or tiled over the whole image.

Detection (`mark_score`) re-renders the same stamp from the spec stored in the PNG metadata and
correlates the image's luminance with the stamp's expected contribution: ~0 on an unmarked image,
high on a marked one. It tells "this mark is (not) there", not "some mark is there".
"""

from __future__ import annotations

import hashlib
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from daemon.config import defaults as config_defaults
from daemon.crypto import WatermarkError
from daemon.schema import choices, parse_color

ANCHORS = choices("watermark.position")
"""The nine anchors as config/default.toml lists them: row by row from the top left, the order
`_anchor_origin` reads them in."""
FONT = cv2.FONT_HERSHEY_SIMPLEX
PRESENT_THRESHOLD = 0.12  # unmarked synthetic and noise images score below 0.06
_LUMA = np.array([0.299, 0.587, 0.114], dtype=np.float32)


@dataclass(frozen=True)
class MarkSpec:
    """Everything needed to draw (or re-draw, for detection) one visible mark."""

    kind: str
    text: str
    logo: str
    logo_sha256: str
    position: str
    margin: float
    opacity: float
    angle: float
    scale: float
    color: tuple[int, int, int]
    outline: tuple[int, int, int]
    tile_spacing: float

    @classmethod
    def shipped(cls, **changes: Any) -> MarkSpec:
        """The mark config/default.toml's `[watermark]` describes (its text taken as it is, not as a
        template; no logo), with `changes`."""
        w = config_defaults().watermark
        spec = cls(kind=w.visible_kind, text=w.text, logo="", logo_sha256="", position=w.position,
                   margin=w.margin, opacity=w.opacity, angle=w.angle, scale=w.scale, color=parse_color(w.color),
                   outline=parse_color(w.outline), tile_spacing=w.tile_spacing)
        return replace(spec, **changes)

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["color"], data["outline"] = list(self.color), list(self.outline)
        return data

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> MarkSpec:
        """A stored spec; a field it lacks (a manifest older than the field) takes the shipped value."""
        known = {k: v for k, v in data.items() if k in cls.__dataclass_fields__}
        for key in ("color", "outline"):
            if key in known:
                known[key] = tuple(int(c) for c in known[key])
        return cls.shipped(**{"text": "", **known})


def drawable(text: str) -> str:
    """OpenCV's Hershey fonts draw printable ASCII only; anything else becomes '?'."""
    return "".join(c if 32 <= ord(c) < 127 else "?" for c in text)


def _rotate(color: np.ndarray, alpha: np.ndarray, angle: float) -> tuple[np.ndarray, np.ndarray]:
    if not angle % 360:
        return color, alpha
    h, w = alpha.shape
    matrix = cv2.getRotationMatrix2D((w / 2, h / 2), angle, 1.0)
    cos, sin = abs(matrix[0, 0]), abs(matrix[0, 1])
    nw, nh = int(np.ceil(h * sin + w * cos)), int(np.ceil(h * cos + w * sin))
    matrix[0, 2] += nw / 2 - w / 2
    matrix[1, 2] += nh / 2 - h / 2
    color = cv2.warpAffine(color, matrix, (nw, nh), flags=cv2.INTER_LINEAR)
    alpha = cv2.warpAffine(alpha, matrix, (nw, nh), flags=cv2.INTER_LINEAR)
    return color, alpha


def _text_stamp(spec: MarkSpec, height_px: float) -> tuple[np.ndarray, np.ndarray]:
    """Light glyphs inside a dark outline; the outline is the glyph mask dilated, so they align."""
    text = drawable(spec.text) or " "
    cap = cv2.getTextSize("X", FONT, 1.0, 1)[0][1]
    font_scale = max(height_px, 6.0) / cap
    thick = max(1, round(height_px / 9))
    edge = max(1, round(height_px / 10))
    (tw, th), base = cv2.getTextSize(text, FONT, font_scale, thick)
    pad = edge + thick + 2
    w, h = tw + 2 * pad, th + base + 2 * pad
    fill = np.zeros((h, w), np.uint8)
    cv2.putText(fill, text, (pad, pad + th), FONT, font_scale, 255, thick, cv2.LINE_AA)
    ring = cv2.dilate(fill, cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * edge + 1, 2 * edge + 1)))
    f = (fill.astype(np.float32) / 255.0)[..., None]
    color = f * np.asarray(spec.color, np.float32) + (1.0 - f) * np.asarray(spec.outline, np.float32)
    return color.astype(np.float32), ring.astype(np.float32) / 255.0


def _logo_stamp(spec: MarkSpec, height_px: float) -> tuple[np.ndarray, np.ndarray]:
    image = cv2.imread(spec.logo, cv2.IMREAD_UNCHANGED) if spec.logo else None
    if image is None:
        raise WatermarkError(f"logo {spec.logo!r} cannot be read as an image; set watermark.logo to a PNG file",
                             path=spec.logo or None)
    if image.dtype != np.uint8:
        image = cv2.convertScaleAbs(image, alpha=255.0 / max(float(image.max()), 1.0))
    if image.ndim == 2:
        image = cv2.cvtColor(image, cv2.COLOR_GRAY2BGRA)
    elif image.shape[2] == 3:
        image = cv2.cvtColor(image, cv2.COLOR_BGR2BGRA)
    h, w = image.shape[:2]
    nh = max(2, round(height_px))
    nw = max(2, round(w * nh / h))
    image = cv2.resize(image, (nw, nh), interpolation=cv2.INTER_AREA)
    color = cv2.cvtColor(image[..., :3], cv2.COLOR_BGR2RGB).astype(np.float32)
    return color, image[..., 3].astype(np.float32) / 255.0


def logo_digest(path: str) -> str:
    try:
        return hashlib.sha256(Path(path).read_bytes()).hexdigest()
    except OSError as exc:
        raise WatermarkError(f"logo {path!r} cannot be read: {exc.strerror}", path=path) from None


def stamp(spec: MarkSpec, shape: tuple[int, ...]) -> tuple[np.ndarray, np.ndarray]:
    """The rotated stamp (colour, alpha) for an image of `shape`."""
    height_px = spec.scale * min(shape[0], shape[1])
    make = _logo_stamp if spec.kind == "logo" else _text_stamp
    color, alpha = make(spec, height_px)
    return _rotate(color, alpha, spec.angle)


def _anchor_origin(spec: MarkSpec, shape: tuple[int, ...], size: tuple[int, int]) -> tuple[int, int]:
    H, W = shape[0], shape[1]
    h, w = size
    m = round(spec.margin * min(H, W))
    row, col = divmod(ANCHORS.index(spec.position), 3)
    x = (m, (W - w) // 2, W - w - m)[col]
    y = (m, (H - h) // 2, H - h - m)[row]
    return y, x


def overlay(spec: MarkSpec, shape: tuple[int, ...]) -> tuple[np.ndarray, np.ndarray, tuple[slice, slice]]:
    """Colour and alpha (opacity applied) for the region they cover, and that region of the image."""
    color, alpha = stamp(spec, shape)
    H, W = shape[0], shape[1]
    h, w = alpha.shape
    if spec.kind == "tiled":
        full_c = np.zeros((H, W, 3), np.float32)
        full_a = np.zeros((H, W), np.float32)
        step_y = max(1, int(h * spec.tile_spacing))
        step_x = max(1, int(w * max(spec.tile_spacing * 0.6, 1.0)))
        for n, y in enumerate(range(-h // 2, H, step_y)):
            for x in range(-w // 2 - (step_x // 2) * (n % 2), W, step_x):
                _paste(full_c, full_a, color, alpha, y, x)
        return full_c, full_a * spec.opacity, (slice(0, H), slice(0, W))
    y, x = _anchor_origin(spec, shape, (h, w))
    y0, x0, y1, x1 = max(y, 0), max(x, 0), min(y + h, H), min(x + w, W)
    if y0 >= y1 or x0 >= x1:
        return np.zeros((0, 0, 3), np.float32), np.zeros((0, 0), np.float32), (slice(0, 0), slice(0, 0))
    sub = (slice(y0 - y, y1 - y), slice(x0 - x, x1 - x))
    return color[sub], alpha[sub] * spec.opacity, (slice(y0, y1), slice(x0, x1))


def _paste(dst_c: np.ndarray, dst_a: np.ndarray, color: np.ndarray, alpha: np.ndarray, y: int, x: int) -> None:
    H, W = dst_a.shape
    h, w = alpha.shape
    y0, x0, y1, x1 = max(y, 0), max(x, 0), min(y + h, H), min(x + w, W)
    if y0 >= y1 or x0 >= x1:
        return
    src = (slice(y0 - y, y1 - y), slice(x0 - x, x1 - x))
    dst = (slice(y0, y1), slice(x0, x1))
    a = alpha[src]
    take = a > dst_a[dst]
    dst_a[dst] = np.where(take, a, dst_a[dst])
    dst_c[dst] = np.where(take[..., None], color[src], dst_c[dst])


def apply_visible(rgb: np.ndarray, spec: MarkSpec) -> np.ndarray:
    """A copy of `rgb` with the mark blended in."""
    out = rgb.copy()
    color, alpha, region = overlay(spec, rgb.shape)
    if alpha.size == 0:
        return out
    a = alpha[..., None]
    base = out[region].astype(np.float32)
    out[region] = np.clip(base * (1.0 - a) + color * a + 0.5, 0, 255).astype(np.uint8)
    return out


def mark_score(rgb: np.ndarray, spec: MarkSpec) -> float:
    """Correlation of the image's luminance with the mark's expected contribution (−1..1).

    The region is the stamp's box plus a border where the mark contributes nothing, so a mark of
    one flat colour (a solid logo) still gives the correlation something to compare against. Both
    signals are high-passed first, so smooth image content does not drown a faint tiled mark.
    """
    color, alpha, (rows, cols) = overlay(spec, rgb.shape)
    if alpha.size == 0 or float(alpha.max()) <= 0:
        return 0.0
    H, W = rgb.shape[0], rgb.shape[1]
    pad = max(2, min(alpha.shape) // 4)
    y0, x0 = max(rows.start - pad, 0), max(cols.start - pad, 0)
    y1, x1 = min(rows.stop + pad, H), min(cols.stop + pad, W)
    expected = np.zeros((y1 - y0, x1 - x0), np.float32)
    expected[rows.start - y0:rows.stop - y0, cols.start - x0:cols.stop - x0] = alpha * (color @ _LUMA - 127.5)
    lum = rgb[y0:y1, x0:x1].astype(np.float32) @ _LUMA
    # High-pass both: the mark is thin strokes, most image content is smoother than that.
    sigma = max(1.5, spec.scale * min(H, W) / 4)
    e = expected - cv2.GaussianBlur(expected, (0, 0), sigma)
    v = lum - cv2.GaussianBlur(lum, (0, 0), sigma)
    e, v = e - e.mean(), v - v.mean()
    denom = float(np.sqrt((e * e).sum() * (v * v).sum()))
    return float((e * v).sum() / denom) if denom > 0 else 0.0
