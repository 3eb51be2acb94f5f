"""The method table: each RPC method is an async function with typed keyword parameters.

`@method("job.get", role=Role.VIEWER)` registers a handler. Parameters are checked against the
handler's signature before it runs: unknown names, missing required ones and wrong types get
-32602 naming the field, so handlers only deal with values of the declared types.
"""

from __future__ import annotations

import inspect
import types
import typing
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, TypeVar, Union

from daemon.auth import Peer, Role
from daemon.protocol import METHOD_NOT_FOUND, NOT_PERMITTED, RpcError, echo, invalid_params

if TYPE_CHECKING:  # the parts' modules import heavy packages; handlers get them at run time from the daemon
    from daemon.api.limits import CallLimits
    from daemon.audit.log import AuditLog
    from daemon.connection import Connection
    from daemon.crypto.keys import KeyStore
    from daemon.dispatch import Box
    from daemon.fleet.member import FleetMember
    from daemon.monitor.service import Monitor
    from daemon.outputs.sink import KeyMaintenance
    from daemon.queue.history import JobHistory
    from daemon.queue.manager import QueueManager
    from daemon.queue.store import JobStore

__all__ = [
    "METHODS",
    "CallContext",
    "DaemonApi",
    "Method",
    "Role",
    "int64_param",
    "lookup",
    "method",
    "time_param",
]

INT64_MIN, INT64_MAX = -2**63, 2**63 - 1
T = TypeVar("T")


class DaemonApi(Protocol):
    """Exactly what the method handlers use of the daemon (daemon.service.Daemon is one), so a
    reader and mypy can follow every handler into the part it calls."""

    @property
    def queue(self) -> QueueManager: ...
    @property
    def dispatcher(self) -> Box: ...
    @property
    def fleet(self) -> FleetMember | None:
        """This box in the fleet; None on a single box (`[fleet] database` empty)."""
    @property
    def monitor(self) -> Monitor: ...
    @property
    def audit(self) -> AuditLog: ...
    @property
    def store(self) -> JobStore: ...
    @property
    def job_history(self) -> JobHistory: ...
    @property
    def keystore(self) -> KeyStore: ...
    @property
    def key_maintenance(self) -> KeyMaintenance: ...
    @property
    def call_limits(self) -> CallLimits: ...
    @property
    def outputs_dir(self) -> Path: ...

    def status(self, peer: Peer) -> dict[str, Any]:
        """`daemon.status` for `peer`."""

    async def audit_action(self, peer: Peer | dict[str, Any] | None, action: str, subject: str,
                           details: dict[str, Any]) -> None:
        """Record a state change in the audit log (None: the daemon itself)."""

    async def run_blocking(self, fn: Callable[..., T], *args: Any) -> T:
        """Run blocking work in the daemon's thread pool."""


@dataclass
class CallContext:
    """What a handler may use: the daemon's parts, who is calling, and their connection (None for
    a call made in-process)."""

    daemon: DaemonApi
    peer: Peer
    connection: Connection | None = None

    def require(self, role: Role, action: str) -> None:
        if self.peer.role < role:
            raise RpcError(NOT_PERMITTED,
                           f"{action} needs the {role.label} role; {self.peer.user} is {self.peer.role.label}",
                           {"needed": role.label, "have": self.peer.role.label})


Handler = Callable[..., Awaitable[Any]]


@dataclass(frozen=True)
class Method:
    name: str
    role: Role
    handler: Handler
    params: dict[str, inspect.Parameter]
    hints: dict[str, Any]
    checks: dict[str, Callable[[Any], bool]]
    required: frozenset[str]


METHODS: dict[str, Method] = {}


def method(name: str, role: Role) -> Callable[[Handler], Handler]:
    def register(handler: Handler) -> Handler:
        signature = inspect.signature(handler)
        params = dict(list(signature.parameters.items())[1:])  # drop ctx
        hints = typing.get_type_hints(handler)
        checks = {p: _checker(hints.get(p, Any)) for p in params}
        required = frozenset(p for p, spec in params.items() if spec.default is inspect.Parameter.empty)
        METHODS[name] = Method(name, role, handler, params, hints, checks, required)
        return handler

    return register


def time_param(name: str, value: float | str) -> float:
    """A moment given as epoch seconds or RFC 3339 text, as epoch seconds; -32602 naming `name`
    otherwise (report and metrics methods take such moments)."""
    from daemon.monitor.history import parse_time

    try:
        return parse_time(value, name)
    except ValueError as exc:
        raise invalid_params(name, str(exc)) from None


def int64_param(name: str, value: int) -> int:
    """`value` when it fits the 64-bit integers SQLite and the daemon store; -32602 naming `name` otherwise."""
    if not INT64_MIN <= value <= INT64_MAX:
        raise invalid_params(name, f"{echo(str(value))} is out of range; integers must lie between {INT64_MIN} "
                                   f"and {INT64_MAX}")
    return value


def lookup(name: str) -> Method:
    try:
        return METHODS[name]
    except KeyError:
        raise RpcError(METHOD_NOT_FOUND, f"no such method: {echo(name)}") from None


def _checker(hint: Any) -> Callable[[Any], bool]:
    """A predicate for values of type `hint`, built once when the method is registered."""
    if hint is Any:
        return lambda value: True
    origin = typing.get_origin(hint)
    if origin in (Union, types.UnionType):
        options = [_checker(arg) for arg in typing.get_args(hint)]
        return lambda value: any(check(value) for check in options)
    if origin is typing.Literal:
        allowed = typing.get_args(hint)
        return lambda value: value in allowed
    if hint is type(None):
        return lambda value: value is None
    if hint is bool:
        return lambda value: isinstance(value, bool)
    if hint is int:
        return lambda value: isinstance(value, int) and not isinstance(value, bool)
    if hint is float:
        return lambda value: isinstance(value, (int, float)) and not isinstance(value, bool)
    if origin in (list, tuple):
        args = typing.get_args(hint)
        item = _checker(args[0]) if args else (lambda value: True)
        return lambda value: isinstance(value, list) and all(item(v) for v in value)
    if origin is dict or hint is dict:
        return lambda value: isinstance(value, dict)
    if isinstance(hint, type):
        return lambda value: isinstance(value, hint)
    return lambda value: True


def _describe(hint: Any) -> str:
    origin = typing.get_origin(hint)
    if origin in (Union, types.UnionType):
        return " or ".join(_describe(a) for a in typing.get_args(hint))
    if origin is typing.Literal:
        return "one of " + ", ".join(repr(a) for a in typing.get_args(hint))
    if hint is type(None):
        return "null"
    names = {bool: "a boolean", int: "an integer", float: "a number", str: "a string", dict: "an object"}
    if origin in (list, tuple):
        return "a list"
    return names.get(hint, getattr(hint, "__name__", str(hint)))


def bind(m: Method, params: dict[str, Any]) -> dict[str, Any]:
    """Check `params` against the handler's signature; return the keyword arguments."""
    for name in params:
        if name not in m.checks:
            accepted = ", ".join(m.params) or "none"
            raise invalid_params(echo(name), f"unknown parameter for {m.name}; accepted: {accepted}")
    for name in m.required:
        if name not in params:
            raise invalid_params(name, "required")
    for name, value in params.items():
        if not m.checks[name](value):
            hint = m.hints.get(name, Any)
            raise invalid_params(name, f"must be {_describe(hint)}, got {type(value).__name__}")
        if isinstance(value, int) and not isinstance(value, bool):
            int64_param(name, value)
    return params


async def call(m: Method, ctx: CallContext, params: dict[str, Any]) -> Any:
    ctx.require(m.role, m.name)
    return await m.handler(ctx, **bind(m, params))
