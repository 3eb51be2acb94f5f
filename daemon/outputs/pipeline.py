"""The output path the daemon runs for every image (in its thread pool, never on the event loop).

    visible mark → invisible fingerprint → PNG with metadata → SHA-256 → AES-256-GCM (SAIE)
    → atomic write of <job>-<n>.png.sai → manifest + Ed25519 signature → atomic write of
    <job>-<n>.manifest.sig, then <job>-<n>.manifest.json

The manifest is written last: its presence means the output is complete. A crash earlier leaves
at most an image or signature without a manifest, which `protect_image` overwrites on retry and
`verify_output` reports as incomplete.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping

import numpy as np

from daemon.crypto import OutputError, envelope
from daemon.outputs import watermark
from daemon.outputs.atomic import atomic_write
from daemon.outputs.manifest import FORMAT, manifest_bytes, output_paths, sha256_hex, sign
from daemon.outputs.png import encode_png, metadata_text
from daemon.outputs.visible import ANCHORS, KINDS, MarkSpec, apply_visible, logo_digest, parse_color

if TYPE_CHECKING:
    from daemon.crypto.keys import KeyStore

TEMPLATE_FIELDS = ("job_id", "date", "user", "index", "model")


def _config_error(key: str, reason: str) -> Exception:
    from daemon.config import ConfigError

    return ConfigError("config", key, reason)


@dataclass(frozen=True)
class OutputSettings:
    """The `[watermark]` and `[outputs]` config sections, checked."""

    visible: bool = True
    visible_kind: str = "text"
    text: str = "SAI {job_id} {date}"
    logo: str = ""
    position: str = "bottom-right"
    margin: float = 0.02
    opacity: float = 0.6
    angle: float = 0.0
    scale: float = 0.045
    color: str = "#ffffff"
    outline: str = "#000000"
    tile_spacing: float = 2.0
    invisible: bool = True
    invisible_strength: int = watermark.DEFAULT_STRENGTH
    png_compress_level: int = 1
    preview_max_side: int = 256

    @classmethod
    def from_config(cls, sections: Mapping[str, Mapping[str, Any]]) -> "OutputSettings":
        """From `{"watermark": {...}, "outputs": {...}}` (unknown keys of other owners ignored)."""
        values: dict[str, Any] = {}
        for section in ("watermark", "outputs"):
            table = sections.get(section) or {}
            for name in cls.__dataclass_fields__:
                if name in table:
                    default = getattr(cls, name)
                    value = table[name]
                    if isinstance(default, float) and isinstance(value, int) and not isinstance(value, bool):
                        value = float(value)
                    if type(value) is not type(default):
                        raise _config_error(f"{section}.{name}", f"must be {type(default).__name__}, "
                                                                 f"not {type(value).__name__}")
                    values[name] = value
        settings = cls(**values)
        settings.check()
        return settings

    def check(self) -> None:
        w = "watermark."
        if self.visible_kind not in KINDS:
            raise _config_error(w + "visible_kind", f"must be one of {', '.join(KINDS)}")
        if self.position not in ANCHORS:
            raise _config_error(w + "position", f"must be one of {', '.join(ANCHORS)}")
        for name, low, high in (("opacity", 0.0, 1.0), ("margin", 0.0, 0.5), ("scale", 0.001, 1.0),
                                ("tile_spacing", 1.0, 20.0)):
            if not low <= getattr(self, name) <= high:
                raise _config_error(w + name, f"must be between {low} and {high}")
        for name in ("color", "outline"):
            try:
                parse_color(getattr(self, name))
            except ValueError as exc:
                raise _config_error(w + name, str(exc)) from None
        try:
            self.text.format(**{k: "x" for k in TEMPLATE_FIELDS})
        except (KeyError, IndexError, ValueError) as exc:
            raise _config_error(w + "text", f"bad template ({exc}); fields: "
                                + ", ".join("{%s}" % k for k in TEMPLATE_FIELDS)) from None
        if self.visible and self.visible_kind == "logo" and not Path(self.logo).is_file():
            raise _config_error(w + "logo", f"visible_kind is logo but {self.logo!r} is not a file")
        if not 8 <= self.invisible_strength <= 128:
            raise _config_error(w + "invisible_strength", "must be between 8 and 128")
        if not 0 <= self.png_compress_level <= 9:
            raise _config_error("outputs.png_compress_level", "must be between 0 and 9")
        if not 16 <= self.preview_max_side <= 2048:
            raise _config_error("outputs.preview_max_side", "must be between 16 and 2048")


@dataclass(frozen=True)
class OutputInfo:
    job_id: str
    index: int
    user: str
    params: dict[str, Any]
    prompt: str
    negative_prompt: str = ""
    seed: int | None = None
    model_id: str = ""
    weights_sha256: str = ""
    created: datetime | None = None


@dataclass(frozen=True)
class ProtectedOutput:
    sai_path: Path
    manifest_path: Path
    sig_path: Path
    png_sha256: str
    sai_sha256: str
    kid: str
    signing_kid: str
    fingerprint: str
    manifest: dict[str, Any]
    timings: dict[str, float] = field(default_factory=dict)

    @property
    def paths(self) -> tuple[Path, Path, Path]:
        return self.sai_path, self.manifest_path, self.sig_path


def _rfc3339(moment: datetime) -> str:
    return moment.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def mark_spec(settings: OutputSettings, info: OutputInfo, created: datetime) -> MarkSpec:
    text = settings.text.format(job_id=info.job_id, date=created.astimezone(timezone.utc).strftime("%Y-%m-%d"),
                                user=info.user, index=info.index, model=info.model_id)
    logo = settings.logo if settings.visible_kind == "logo" else ""
    return MarkSpec(kind=settings.visible_kind, text=text, logo=logo,
                    logo_sha256=logo_digest(logo) if logo else "", position=settings.position,
                    margin=settings.margin, opacity=settings.opacity, angle=settings.angle, scale=settings.scale,
                    color=parse_color(settings.color), outline=parse_color(settings.outline),
                    tile_spacing=settings.tile_spacing)


def mark_image(rgb: np.ndarray, info: OutputInfo, settings: OutputSettings, created: datetime,
               timings: dict[str, float] | None = None) -> tuple[np.ndarray, MarkSpec | None, bool]:
    """Both watermarks as configured: (marked image, visible spec or None, invisible applied?)."""
    timings = {} if timings is None else timings
    start = time.perf_counter()
    spec = mark_spec(settings, info, created) if settings.visible else None
    image = apply_visible(rgb, spec) if spec else rgb
    middle = time.perf_counter()
    invisible = settings.invisible and watermark.can_carry(image.shape)
    if invisible:
        image = watermark.embed_invisible(image, watermark.fingerprint(info.job_id), settings.invisible_strength)
    timings["visible"], timings["invisible"] = middle - start, time.perf_counter() - middle
    return image, spec, invisible


def protect_image(rgb: np.ndarray, info: OutputInfo, keystore: "KeyStore", settings: OutputSettings,
                  out_dir: Path) -> ProtectedOutput:
    """Watermark, encode, sign, encrypt and atomically write one image. Returns paths, hashes, timings."""
    if rgb.dtype != np.uint8 or rgb.ndim != 3 or rgb.shape[2] != 3:
        raise OutputError(f"expected an (H, W, 3) uint8 RGB image, got {rgb.shape} {rgb.dtype}", field="image")
    sai_path, manifest_path, sig_path = output_paths(out_dir, info.job_id, info.index)
    if manifest_path.exists():
        raise OutputError(f"output {manifest_path.name} already exists; outputs are written once", field="file")
    created = info.created or datetime.now(timezone.utc)
    timings: dict[str, float] = {}
    image, spec, invisible = mark_image(rgb, info, settings, created, timings)
    fp = watermark.fingerprint(info.job_id)
    clock = time.perf_counter()

    def lap(step: str) -> None:
        nonlocal clock
        now = time.perf_counter()
        timings[step] = now - clock
        clock = now

    fields: dict[str, Any] = {
        "job_id": info.job_id, "index": info.index, "params": info.params, "prompt": info.prompt,
        "negative_prompt": info.negative_prompt or None, "seed": info.seed, "model_id": info.model_id,
        "weights_sha256": info.weights_sha256 or None, "created_at": _rfc3339(created), "user": info.user,
        "fingerprint": fp.hex() if invisible else None,
        "invisible_strength": settings.invisible_strength if invisible else None,
        "visible_mark": spec.to_json() if spec else None,
    }
    png = encode_png(image, metadata_text(fields), settings.png_compress_level)
    lap("png")
    png_sha256 = sha256_hex(png)
    lap("hash")
    blob = envelope.encrypt(png, info.job_id, envelope.PNG, keystore)
    env = envelope.parse(blob)
    lap("encrypt")
    atomic_write(sai_path, blob)
    lap("write_image")
    signing_kid, signing_key = keystore.signer()
    manifest = {
        "format": FORMAT, "job_id": info.job_id, "index": info.index, "file": sai_path.name,
        "params": info.params, "prompt_sha256": sha256_hex(info.prompt.encode("utf-8")),
        "negative_prompt_sha256": sha256_hex(info.negative_prompt.encode("utf-8")),
        "model_id": info.model_id, "weights_sha256": info.weights_sha256, "seed": info.seed,
        "png_sha256": png_sha256, "png_size": len(png), "sai_sha256": sha256_hex(blob), "sai_size": len(blob),
        "aad_sha256": sha256_hex(env.aad), "ciphertext_sha256": sha256_hex(env.ciphertext),
        "kid": env.kid, "signing_kid": signing_kid, "created_at": _rfc3339(created),
        "fingerprint": fp.hex(), "watermark": {"visible": spec is not None, "invisible": invisible},
    }
    data = manifest_bytes(manifest)
    signature = sign(data, signing_key)
    lap("manifest")
    atomic_write(sig_path, signature)
    atomic_write(manifest_path, data)
    lap("write_manifest")
    return ProtectedOutput(sai_path, manifest_path, sig_path, png_sha256, manifest["sai_sha256"], env.kid,
                           signing_kid, fp.hex(), manifest, timings)


def rotate_outputs(out_dir: Path, keystore: "KeyStore") -> dict[str, Any]:
    """Re-wrap every .png.sai under the current KEK (header rewritten, ciphertext untouched).

    Atomic per file and idempotent: after a crash, run it again. Manifests are not touched; they
    stay valid because they sign the ciphertext and the protected header (docs/formats.md).
    """
    report: dict[str, Any] = {"kid": keystore.current_kek_id, "rewrapped": 0, "already_current": 0, "failed": []}
    for path in sorted(Path(out_dir).glob("*.png.sai")):
        try:
            blob = path.read_bytes()
            new = envelope.rewrap(blob, keystore)
            if new == blob:
                report["already_current"] += 1
                continue
            atomic_write(path, new)
            report["rewrapped"] += 1
        except OutputError as exc:
            report["failed"].append({"file": path.name, **exc.to_dict()})
    return report


# Verification, export, preview and inspection live in daemon.outputs.verify; import them from here.
from daemon.outputs.verify import export_output, inspect_png, preview_output, preview_png, verify_output  # noqa: E402

__all__ = ["OutputSettings", "OutputInfo", "ProtectedOutput", "protect_image", "mark_image", "rotate_outputs", "output_paths",
           "export_output", "verify_output", "preview_png", "preview_output", "inspect_png"]
