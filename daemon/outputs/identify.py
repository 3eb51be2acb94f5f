"""What an image a client sends says about itself (`output.identify`, `sai identify`): its C2PA
Content Credentials, read offline against this installation's CA certificates, and the invisible
fingerprint. Pure and blocking (bytes in, a report out): the daemon runs it in its thread pool,
and only on bytes a client sent, never on a path it names.

Hostile input is expected. The container must be PNG, JPEG or WebP (Pillow is told to try no
other decoder); its declared size is checked against `MAX_PIXELS` before any pixel is decoded
(a "decompression bomb" declares huge dimensions in a few bytes), and a truncated or damaged file
is refused naming what Pillow found. Each refusal is an `ImageRefused` naming what was wrong.
"""

from __future__ import annotations

import hashlib
import io
import warnings
from dataclasses import dataclass
from typing import Any

import numpy as np

from daemon.outputs import watermark
from daemon.outputs.credentials import ASSERTION, read_credentials
from daemon.queue.jobs import Job
from daemon.timefmt import rfc3339

MAX_BYTES = 32 * 1024 * 1024
"""The largest file identify takes (a 4096² PNG of a busy image is ~30 MiB)."""
MAX_PIXELS = 40_000_000
"""Width × height past which an image is refused before decoding (~120 MB of RGB)."""
MIME = {"PNG": "image/png", "JPEG": "image/jpeg", "WEBP": "image/webp"}


class ImageRefused(ValueError):
    """The bytes are not an image identify reads; the message says what was wrong."""


@dataclass(frozen=True)
class Examination:
    """The image as found: container, size, hash of the bytes, C2PA reading, mark reading."""

    format: str
    width: int
    height: int
    sha256: str
    c2pa: dict[str, Any]
    mark: dict[str, Any]
    claimed_job: str | None  # the job id our C2PA assertion names (whatever the manifest's state)
    claimed_index: int | None


def decode(data: bytes) -> tuple[str, np.ndarray]:
    """(container name, RGB uint8 pixels) of `data`; ImageRefused naming what was wrong."""
    from PIL import Image, UnidentifiedImageError

    if not data:
        raise ImageRefused("the file is empty")
    if len(data) > MAX_BYTES:
        raise ImageRefused(f"the file is {len(data)} bytes; identify takes at most {MAX_BYTES} bytes")
    kind = "image"
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data), formats=list(MIME))
            kind = f"{image.format} image"
            width, height = image.size
            if width * height > MAX_PIXELS:
                raise ImageRefused(f"the image declares {width}x{height} pixels; identify decodes at most "
                                   f"{MAX_PIXELS} pixels (a larger one may be a decompression bomb)")
            image.seek(0)
            rgb = np.asarray(image.convert("RGB"))
    except UnidentifiedImageError:
        raise ImageRefused(f"not a PNG, JPEG or WebP image (starts with {data[:8].hex()})") from None
    except (Image.DecompressionBombWarning, Image.DecompressionBombError) as exc:
        raise ImageRefused(f"refused as a decompression bomb: {exc}") from None
    except (OSError, ValueError, SyntaxError, EOFError) as exc:
        if isinstance(exc, ImageRefused):
            raise
        raise ImageRefused(f"the {kind} is damaged or truncated: {exc}") from None
    if rgb.ndim != 3 or rgb.shape[2] != 3 or rgb.dtype != np.uint8:
        raise ImageRefused(f"unsupported pixel layout {rgb.shape} {rgb.dtype}")
    return str(image.format), rgb


def _c2pa(data: bytes, container: str, anchors_pem: str | None) -> tuple[dict[str, Any], str | None, int | None]:
    """The C2PA reading as reported, and the job and image index our assertion names (if any)."""
    try:
        reading = read_credentials(data, anchors_pem, MIME[container])
    except Exception as exc:  # c2pa's reader on hostile bytes: report, never fail the whole identify
        return {"state": None, "failures": [f"unreadable: {exc}"]}, None, None
    report: dict[str, Any] = {"state": reading.state, "failures": reading.failures}
    if reading.state is None:
        return report, None, None
    manifests = reading.manifest.get("manifests", {})
    active = manifests.get(reading.manifest.get("active_manifest", ""), {})
    signature = active.get("signature_info", {})
    generator = (active.get("claim_generator_info") or [{}])[0]
    report.update(signer=signature.get("common_name"), issuer=signature.get("issuer"), alg=signature.get("alg"),
                  generator=" ".join(str(v) for v in (generator.get("name"), generator.get("version")) if v) or None)
    assertions = active.get("assertions", [])
    ours: dict[str, Any] = next((a.get("data", {}) for a in assertions if a.get("label") == ASSERTION), {})
    job_id, index = ours.get("job_id"), ours.get("index")
    return (report, job_id if isinstance(job_id, str) else None,
            index if isinstance(index, int) and not isinstance(index, bool) else None)


def examine(data: bytes, anchors_pem: str | None) -> tuple[Examination, watermark.Reading | None]:
    """Decode `data`, read its C2PA manifest (anchors: our CA certificates) and its mark. The
    dwtdct reading is returned too (None when the robust mark was found or the image is too small
    for it), so the caller can check it against a job the manifest names."""
    container, rgb = decode(data)
    c2pa, claimed_job, claimed_index = _c2pa(data, container, anchors_pem)
    mark = watermark.report(rgb)
    legacy = None
    if mark.get("method") != watermark.MARK_NAMES["robust"] and watermark.can_carry(rgb.shape, "dwtdct"):
        legacy = watermark.read_invisible(rgb)
    found = {"found": bool(mark.get("present")), "method": mark.get("method"),
             "fingerprint": mark.get("fingerprint") if mark.get("present") else None,
             "confidence": mark.get("confidence") if mark.get("present") else None}
    for key in ("chance", "corrected", "scale"):
        if key in mark:
            found[key] = mark[key]
    if "reason" in mark:
        found["reason"] = mark["reason"]
    exam = Examination(container, int(rgb.shape[1]), int(rgb.shape[0]), hashlib.sha256(data).hexdigest(), c2pa,
                       found, claimed_job, claimed_index)
    return exam, legacy


def choose_job(exam: Examination, legacy: watermark.Reading | None, by_fingerprint: list[str],
               claimed_exists: bool) -> tuple[str | None, list[str]]:
    """The job an image is ours by, and how it was found: the robust fingerprint (exact, error
    corrected) first; else the job our C2PA assertion names, when the manifest is Trusted (signed
    by a CA of this installation: a Valid one is signed by anyone's certificate, so it may name
    any job id) or the old dwtdct mark agrees with that job (56 of 64 bits)."""
    found_by: list[str] = []
    job_id = by_fingerprint[0] if by_fingerprint else None
    if job_id is not None:
        found_by.append("fingerprint")
    claimed = exam.claimed_job if claimed_exists else None
    if claimed is not None:
        signed = exam.c2pa.get("state") == "Trusted"
        if job_id is None and legacy is not None and legacy.matches(claimed):
            job_id = claimed
            found_by.append("fingerprint")
        if signed and job_id in (None, claimed):
            job_id = claimed
            found_by.append("c2pa")
    return job_id, found_by


def describe_job(job: Job, exam: Examination, found_by: list[str], show_owner: bool,
                 show_prompt: bool) -> dict[str, Any]:
    """The job as identify reports it. `pixels`: "match" when the bytes are exactly one of the
    job's output PNGs (the SHA-256 its manifest records), "changed" otherwise (re-encoded,
    resized, cropped or edited: the fingerprint survives, the hash cannot)."""
    recorded = {o.get("png_sha256") or o.get("sha256"): o["index"] for o in job.outputs}
    index = recorded.get(exam.sha256, exam.claimed_index if exam.claimed_job == job.job_id else None)
    described: dict[str, Any] = {
        "job_id": job.job_id, "index": index, "outputs": len(job.outputs), "found_by": found_by,
        "state": job.state, "created_at": rfc3339(job.created_at), "finished_at": rfc3339(job.finished_at),
        "model": job.model_id, "weights_sha256": job.weights_sha256 or None,
        "pixels": "match" if exam.sha256 in recorded else "changed",
        "owner_visible": show_owner, "prompt_visible": show_prompt,
    }
    if show_owner:
        described["user"] = job.user
    if show_prompt:
        described.update(prompt=job.prompt, negative_prompt=job.negative_prompt)
    return described
