"""Where the daemon plugs output protection in: the dispatcher's OutputSink, and key maintenance.

`ProtectedSink.write` runs in the daemon's thread pool for every generated image and turns it
into `<job>-<n>.png.sai` + manifest + signature through `protect_image`. `KeyMaintenance` keeps
the encrypted outputs and the prompt blobs in the database under the current key-encryption key:
after `keys.rotate`, and at start-up when a previous pass did not finish (or prompts from an older
build are still stored in plain text).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from daemon.crypto import OutputError, envelope
from daemon.outputs.pipeline import OutputInfo, OutputSettings, output_paths, protect_image, rotate_outputs
from daemon.safefiles import fsync_dir

if TYPE_CHECKING:
    from daemon.crypto.keys import KeyStore
    from daemon.outputs.pool import MarkPool
    from daemon.queue.jobs import Job
    from daemon.queue.store import JobStore

log = logging.getLogger("sai.outputs")

Runner = Callable[..., Awaitable[Any]]
PROMPTS_KEK = "prompts_kek"    # settings: the KEK every prompt blob was last brought under
OUTPUTS_KEK = "outputs_kek"    # settings: the KEK every .png.sai was last brought under


class ProtectedSink:
    """The dispatcher's OutputSink: watermark, sign, encrypt, write atomically; return the job's record."""

    def __init__(self, keystore: KeyStore, settings: OutputSettings, outputs_dir: Path,
                 weights_sha256: Callable[[], str] = lambda: "", marks: MarkPool | None = None) -> None:
        """`marks`: the pool the pixel stage runs in (None: in the calling thread)."""
        self.keystore = keystore
        self.marks = marks
        self.settings = settings
        self.outputs_dir = outputs_dir
        self.weights_sha256 = weights_sha256

    def write(self, job: Job, index: int, shape: tuple[int, ...], pixels: bytes) -> dict[str, Any]:
        rgb = np.frombuffer(pixels, dtype=np.uint8).reshape(shape)
        created = datetime.now(UTC)
        info = OutputInfo(job_id=job.job_id, index=index, user=job.user, params=dict(job.params),
                          prompt=job.prompt, negative_prompt=job.negative_prompt,
                          seed=job.image_seed(index), model_id=job.model_id,
                          weights_sha256=job.weights_sha256 or self.weights_sha256() or "",
                          model_family=job.model_family, created=created)
        discard_unreported(self.outputs_dir, job.job_id, index)  # only a retried job has any
        marked = None if self.marks is None else self.marks.mark(rgb, info, self.settings, created)
        out = protect_image(rgb, info, self.keystore, self.settings, self.outputs_dir, marked)
        return output_record(index, out, width=int(shape[1]), height=int(shape[0]))

    def discard(self, job_id: str, count: int, why: str = "removing the files of an output that failed") -> None:
        for index in range(count):
            discard_unreported(self.outputs_dir, job_id, index, why)


def discard_unreported(outputs_dir: Path, job_id: str, index: int,
                       why: str = "replacing the files of an interrupted earlier attempt") -> None:
    """Remove what an interrupted earlier attempt of a job wrote for image `index` (the daemon or
    worker died before the job was marked succeeded, so no client was ever given these files).
    Manifest first, so that a crash in between leaves an incomplete output, never a mismatched one."""
    sai, manifest, sig = output_paths(outputs_dir, job_id, index)
    found = [path for path in (manifest, sig, sai) if path.exists()]
    for path in found:
        path.unlink(missing_ok=True)
    if found:
        fsync_dir(outputs_dir)
        log.warning("job %s image %d: %s", job_id, index, why)


def output_record(index: int, out: Any, width: int, height: int) -> dict[str, Any]:
    """What a job's `outputs` list holds for one image. `path` (= `sai_path`) and `sha256`
    (= `png_sha256`, what `output.export` returns) keep older clients working."""
    return {"index": index, "path": str(out.sai_path), "sai_path": str(out.sai_path),
            "manifest": str(out.manifest_path), "signature": str(out.sig_path),
            "sha256": out.png_sha256, "png_sha256": out.png_sha256, "sai_sha256": out.sai_sha256,
            "fingerprint": out.fingerprint, "kid": out.kid, "signing_kid": out.signing_kid,
            "width": width, "height": height, "content_type": "image/png"}


class KeyMaintenance:
    """Re-wraps outputs and prompt blobs under the current KEK; one pass at a time."""

    def __init__(self, keystore: KeyStore, store: JobStore, outputs_dir: Path, run: Runner) -> None:
        self.keystore = keystore
        self.store = store
        self.outputs_dir = outputs_dir
        self.run = run
        self.lock = asyncio.Lock()

    async def reseal_prompts(self) -> dict[str, Any]:
        """Every prompt blob under the current KEK (plaintext rows from an older build encrypted)."""
        kid = self.keystore.current_kek_id
        failed: list[dict[str, Any]] = []

        def transform(blob: bytes, job_id: str) -> bytes | None:
            try:
                return envelope.reseal_text(blob, job_id, self.keystore)
            except (OutputError, UnicodeDecodeError) as exc:
                failed.append({"job_id": job_id, "error": type(exc).__name__,
                               "field": getattr(exc, "field", "prompt")})
                return None

        rewritten = await self.store.reseal_prompts(transform, self.run)
        if not failed:
            await self.store.set_setting(PROMPTS_KEK, kid)
        else:
            log.error("%d prompt blob(s) could not be re-wrapped under %s (damaged?): %s", len(failed), kid,
                      ", ".join(sorted({f["job_id"] for f in failed})))
        return {"kid": kid, "rewrapped": rewritten, "failed": failed}

    async def rewrap_outputs(self) -> dict[str, Any]:
        report = await self.run(rotate_outputs, self.outputs_dir, self.keystore)
        if not report["failed"]:
            await self.store.set_setting(OUTPUTS_KEK, report["kid"])
        else:
            log.error("%d output file(s) could not be re-wrapped under %s: %s", len(report["failed"]),
                      report["kid"], ", ".join(f["file"] for f in report["failed"]))
        return report

    async def rotate(self, announce: Callable[[Any], Awaitable[Any]] | None = None) -> dict[str, Any]:
        """`keys.rotate`: new KEK, signing key and C2PA signing certificate, then outputs and prompts
        re-wrapped (no re-encryption).
        `announce(new_signing_key)` runs right after the keys change, while the old key is still in
        memory (the audit log announces the new key in an entry signed by the old one)."""
        async with self.lock:
            old_kek, old_signing = self.keystore.current_kek_id, self.keystore.signing_kid
            kek_id, signing_kid = await self.run(self.keystore.rotate)
            if announce is not None:
                await announce(self.keystore.signing_key)
                await self.run(self.keystore.retire_previous_signing_key)
            await self.run(self.keystore.c2pa.rotate)
            outputs = await self.rewrap_outputs()
            prompts = await self.reseal_prompts()
        return {"kek_id": kek_id, "signing_kid": signing_kid, "previous_kek_id": old_kek,
                "previous_signing_kid": old_signing, "outputs": outputs,
                "prompts": {"rewrapped": prompts["rewrapped"], "failed": prompts["failed"]}}

    async def prompts_pending(self) -> bool:
        return await self.store.get_setting(PROMPTS_KEK) != self.keystore.current_kek_id

    async def outputs_pending(self) -> bool:
        return await self.store.get_setting(OUTPUTS_KEK) != self.keystore.current_kek_id

    async def resume_prompts(self) -> None:
        """Start-up, before jobs are loaded: prompts a crash left under an older KEK, or that an
        older build stored in plain text, are brought under the current one."""
        async with self.lock:
            if await self.prompts_pending():
                report = await self.reseal_prompts()
                if report["rewrapped"]:
                    log.info("brought the prompts of %d job(s) under key %s", report["rewrapped"], report["kid"])

    async def resume_outputs(self) -> None:
        """Start-up (in the background): finish re-wrapping outputs if a rotation was interrupted."""
        async with self.lock:
            if await self.outputs_pending():
                report = await self.rewrap_outputs()
                if report["rewrapped"]:
                    log.info("re-wrapped %d output(s) under key %s", report["rewrapped"], report["kid"])
