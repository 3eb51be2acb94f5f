"""model.list: the configured models, their defaults and what the worker holds of them."""

from __future__ import annotations

from typing import Any

from daemon.api.registry import CallContext, Role, method


@method("model.list", role=Role.VIEWER)
async def list_models(ctx: CallContext) -> dict[str, Any]:
    """`{"models": [{name, family, path, default, loaded, device, dtype, weights_sha256, size_bytes,
    defaults}]}`, the default model first. `weights_sha256` once the worker has loaded it."""
    return ctx.daemon.queue.models.model_list()
