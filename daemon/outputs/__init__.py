"""Output protection: watermarks, PNG metadata, manifests and signatures, encrypted atomic writes.

The daemon calls `daemon.outputs.pipeline.protect_image` in its thread pool. This package module
imports nothing heavy (no OpenCV, no numpy) so the error classes stay cheap. Files are
written through `daemon.safefiles.atomic_write`, which the key store and the audit anchor share.
"""

from __future__ import annotations

from daemon.crypto import OutputError

__all__ = ["OutputError"]
