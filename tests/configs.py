"""Config overrides the daemon tests share."""

from __future__ import annotations

from typing import Any

NO_WORKER: dict[str, dict[str, Any]] = {"model": {"preload": False}, "queue": {"start_paused": True}}
"""A daemon that loads no model and starts no batch: submits stay queued until queue.resume,
so a test sees the queue, the audit log and the API without a worker process."""
