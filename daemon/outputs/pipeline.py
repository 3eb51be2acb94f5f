"""The output path the daemon runs for every image (in its thread pool, never on the event loop).

    visible mark → invisible fingerprint → PNG with metadata → C2PA manifest (daemon.outputs.credentials)
    → SHA-256 → AES-256-GCM (SAIE)
    → atomic write of <job>-<n>.png.sai → manifest + Ed25519 signature → atomic write of
    <job>-<n>.manifest.sig, then <job>-<n>.manifest.json

The manifest is written last: its presence means the output is complete. A crash earlier leaves
at most an image or signature without a manifest, which `protect_image` overwrites on retry and
`verify_output` reports as incomplete.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

import numpy as np

from daemon.config import Config, ConfigError
from daemon.config import defaults as config_defaults
from daemon.crypto import OutputError, envelope
from daemon.outputs import watermark
from daemon.outputs.credentials import Provenance, embed_credentials
from daemon.outputs.manifest import FORMAT, manifest_bytes, output_paths, sha256_hex, sign
from daemon.outputs.png import encode_png, metadata_text
from daemon.outputs.visible import MarkSpec, apply_visible, logo_digest
from daemon.safefiles import atomic_write
from daemon.schema import parse_color

if TYPE_CHECKING:
    from daemon.crypto.keys import KeyStore

@dataclass(frozen=True)
class OutputSettings:
    """The `[watermark]` and `[outputs]` config sections, typed. Their defaults and ranges are those
    of config/default.toml, checked when the config is loaded (daemon.config, daemon.schema)."""

    visible: bool
    visible_kind: str
    text: str
    logo: str
    position: str
    margin: float
    opacity: float
    angle: float
    scale: float
    color: str
    outline: str
    tile_spacing: float
    invisible: bool
    invisible_strength: int
    invisible_method: str
    png_compress_level: int
    preview_max_side: int
    c2pa: bool

    @classmethod
    def from_config(cls, cfg: Config) -> OutputSettings:
        """From a loaded config; ConfigError when the logo to draw is not a file."""
        values = {**cfg.values["watermark"], **cfg.values["outputs"]}
        settings = cls(**{name: values[name] for name in cls.__dataclass_fields__})
        if settings.visible and settings.visible_kind == "logo" and not Path(settings.logo).is_file():
            raise ConfigError("config", "watermark.logo", f"visible_kind is logo but {settings.logo!r} is not a file")
        return settings

    @classmethod
    def defaults(cls, **changes: Any) -> OutputSettings:
        """The shipped settings, with `changes` (checked like a config file's) for tests and benches."""
        shipped = config_defaults()
        section = {key: name for name in ("watermark", "outputs") for key in shipped.values[name]}
        return cls.from_config(shipped.replace(**{f"{section[key]}__{key}": value for key, value in changes.items()}))


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
    model_family: str = ""
    created: datetime | None = None


class Marked(NamedTuple):
    """The pixel stage's result (`mark_image`), made in the daemon or in a pool process (daemon.outputs.pool)."""

    image: np.ndarray
    spec: MarkSpec | None
    invisible: bool
    timings: dict[str, float]
    pid: int


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
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def mark_spec(settings: OutputSettings, info: OutputInfo, created: datetime) -> MarkSpec:
    text = settings.text.format(job_id=info.job_id, date=created.astimezone(UTC).strftime("%Y-%m-%d"),
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
    invisible = settings.invisible and watermark.can_carry(image.shape, settings.invisible_method)
    if invisible:
        image = watermark.mark(image, watermark.fingerprint(info.job_id), settings.invisible_method,
                               settings.invisible_strength)
    timings["visible"], timings["invisible"] = middle - start, time.perf_counter() - middle
    return image, spec, invisible


def watermark_record(settings: OutputSettings, visible: bool, invisible: bool,
                     shape: tuple[int, ...]) -> dict[str, Any]:
    """The manifest's `watermark` member: which marks were applied, the invisible one's method, and
    why the configured mark was not (an image under 512x512 gets the dwtdct mark, under 256x256 none)."""
    record: dict[str, Any] = {"visible": visible, "invisible": invisible}
    method = watermark.method_for(shape, settings.invisible_method) if invisible else None
    if method:
        record["invisible_method"] = watermark.MARK_NAMES[method]
    if settings.invisible and (reason := watermark.too_small(shape, settings.invisible_method)):
        record["invisible_reason"] = reason
    return record


def protect_image(rgb: np.ndarray, info: OutputInfo, keystore: KeyStore, settings: OutputSettings,
                  out_dir: Path, marked: Marked | None = None) -> ProtectedOutput:
    """Watermark, encode, sign, encrypt and atomically write one image. Returns paths, hashes, timings.
    `marked`: the pixel stage already done for `rgb` elsewhere (daemon.outputs.pool); the keyed stage
    (everything from the PNG on) always runs here, in the daemon."""
    if rgb.dtype != np.uint8 or rgb.ndim != 3 or rgb.shape[2] != 3:
        raise OutputError(f"expected an (H, W, 3) uint8 RGB image, got {rgb.shape} {rgb.dtype}", field="image")
    sai_path, manifest_path, sig_path = output_paths(out_dir, info.job_id, info.index)
    if manifest_path.exists():
        raise OutputError(f"output {manifest_path.name} already exists; outputs are written once", field="file")
    created = info.created or datetime.now(UTC)
    timings: dict[str, float] = {}
    if marked is None:
        image, spec, invisible = mark_image(rgb, info, settings, created, timings)
    else:
        image, spec, invisible = marked.image, marked.spec, marked.invisible
        timings.update(marked.timings)
    fp = watermark.fingerprint(info.job_id)
    mark_record = watermark_record(settings, spec is not None, invisible, image.shape)
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
        "invisible_method": mark_record.get("invisible_method"),
        "invisible_strength": settings.invisible_strength
        if mark_record.get("invisible_method") == watermark.MARK_NAMES["dwtdct"] else None,
        "visible_mark": spec.to_json() if spec else None,
    }
    png = encode_png(image, metadata_text(fields), settings.png_compress_level)
    lap("png")
    if settings.c2pa:
        png = embed_credentials(png, Provenance(info.job_id, info.index, info.model_id, info.weights_sha256), keystore)
        lap("c2pa")
    png_sha256 = sha256_hex(png)
    lap("hash")
    blob = envelope.encrypt(png, info.job_id, envelope.PNG, keystore)
    env = envelope.parse(blob)
    lap("encrypt")
    atomic_write(sai_path, blob, sync_dir=False)  # the manifest's write below syncs the directory
    lap("write_image")
    signing_kid, signing_key = keystore.signer()
    sai_sha256 = sha256_hex(blob)
    manifest = {
        "format": FORMAT, "job_id": info.job_id, "index": info.index, "file": sai_path.name,
        "params": info.params, "prompt_sha256": sha256_hex(info.prompt.encode("utf-8")),
        "negative_prompt_sha256": sha256_hex(info.negative_prompt.encode("utf-8")),
        "model_id": info.model_id, "model_family": info.model_family, "weights_sha256": info.weights_sha256,
        "seed": info.seed,
        "png_sha256": png_sha256, "png_size": len(png), "sai_sha256": sai_sha256, "sai_size": len(blob),
        "aad_sha256": sha256_hex(env.aad), "ciphertext_sha256": sha256_hex(env.ciphertext),
        "kid": env.kid, "signing_kid": signing_kid, "created_at": _rfc3339(created),
        "fingerprint": fp.hex(), "watermark": mark_record,
    }
    data = manifest_bytes(manifest)
    signature = sign(data, signing_key)
    lap("manifest")
    atomic_write(sig_path, signature, sync_dir=False)
    atomic_write(manifest_path, data)
    lap("write_manifest")
    return ProtectedOutput(sai_path, manifest_path, sig_path, png_sha256, sai_sha256, env.kid,
                           signing_kid, fp.hex(), manifest, timings)


def rotate_outputs(out_dir: Path, keystore: KeyStore) -> dict[str, Any]:
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

__all__ = [
    "Marked",
    "OutputInfo",
    "OutputSettings",
    "ProtectedOutput",
    "export_output",
    "inspect_png",
    "mark_image",
    "output_paths",
    "preview_output",
    "preview_png",
    "protect_image",
    "rotate_outputs",
    "verify_output",
]
