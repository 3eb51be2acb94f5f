"""What a `sai` command prints: JSON, `name  value` lines, and errors (on stderr, and as JSON on
stdout too when the command was given --json). Light: no daemon part beyond the protocol's names."""

from __future__ import annotations

import json
import sys
from collections.abc import Iterable
from typing import Any

from console.fleetroute import held_elsewhere
from daemon.client import DaemonUnavailable
from daemon.exitcodes import ExitCode
from daemon.protocol import NOT_PERMITTED, UNAVAILABLE, RpcError


class _Mode:
    """Whether this run's errors are also printed as JSON on stdout (the command was given --json)."""

    json_errors = False


def set_json_errors(on: bool) -> None:
    _Mode.json_errors = on


def print_json(value: Any) -> None:
    print(json.dumps(value, indent=2, ensure_ascii=False))


def print_fields(rows: Iterable[tuple[str, Any]]) -> None:
    """`name  value` lines, the values in one column; None and "" print as "-"."""
    rows = list(rows)
    width = max((len(name) for name, _ in rows), default=0)
    for name, value in rows:
        print(f"{name:<{width}}  {'-' if value is None or value == '' else value}")


def fail(message: str, code: int = ExitCode.FAILURE, data: dict[str, Any] | None = None) -> int:
    """Say what went wrong on stderr (and as JSON on stdout under --json); return the exit status."""
    print(f"sai: {message}", file=sys.stderr)
    if _Mode.json_errors:
        name = ExitCode(code).name if code in ExitCode._value2member_map_ else ExitCode.FAILURE.name
        error: dict[str, Any] = {"code": name.lower().replace("_", "-"), "exit": int(code), "message": message}
        if data:
            error.update(data)
        print(json.dumps({"error": error}, ensure_ascii=False), flush=True)
    return code


TRANSIENT = ("fleet_database", "connections")
"""-32010 reasons that pass: the fleet database does not answer, no connection to spare."""


def rpc_failure(exc: RpcError) -> int:
    """A daemon's refusal: DENIED when the caller's role does not allow the method, UNAVAILABLE when
    the outputs asked for are on another box of the fleet (that no client socket reaches) or the
    refusal passes (a script tries again), else FAILURE."""
    reason = exc.data.get("reason") if isinstance(exc.data, dict) else None
    try_later = held_elsewhere(exc) is not None or (exc.code == UNAVAILABLE and reason in TRANSIENT)
    code = (ExitCode.DENIED if exc.code == NOT_PERMITTED else
            ExitCode.UNAVAILABLE if try_later else ExitCode.FAILURE)
    return fail(exc.message, code, {"rpc_code": exc.code, **({"data": exc.data} if exc.data is not None else {})})


def unavailable(exc: DaemonUnavailable) -> int:
    """No daemon to talk to: DENIED when the socket refused us, else UNAVAILABLE."""
    denied = isinstance(exc.__cause__, PermissionError)
    return fail(str(exc), ExitCode.DENIED if denied else ExitCode.UNAVAILABLE)
