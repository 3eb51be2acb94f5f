"""Where the socket and the state live."""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

SYSTEM_SOCKET = Path("/run/secure-ai-studio/daemon.sock")


def socket_path(explicit: str | os.PathLike[str] | None = None, configured: str = "",
                environ: Mapping[str, str] | None = None) -> Path:
    """--socket, else $SAI_SOCKET, else config, else $XDG_RUNTIME_DIR/sai/daemon.sock, else the system path."""
    environ = os.environ if environ is None else environ
    if explicit:
        return Path(explicit)
    if environ.get("SAI_SOCKET"):
        return Path(environ["SAI_SOCKET"])
    if configured:
        return Path(configured)
    if environ.get("XDG_RUNTIME_DIR"):
        return Path(environ["XDG_RUNTIME_DIR"]) / "sai" / "daemon.sock"
    return SYSTEM_SOCKET


def state_dir(explicit: str | os.PathLike[str] | None = None, configured: str = "",
              environ: Mapping[str, str] | None = None) -> Path:
    """--state-dir, else config, else $XDG_STATE_HOME/secure-ai-studio."""
    environ = os.environ if environ is None else environ
    if explicit:
        return Path(explicit)
    if configured:
        return Path(configured)
    base = environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(base) / "secure-ai-studio"
