"""The method table: each RPC method is an async function with typed keyword parameters.

`@method("job.get", role=Role.VIEWER)` registers a handler. Parameters are checked against the
handler's signature before it runs: unknown names, missing required ones and wrong types get
-32602 naming the field, so handlers only deal with values of the declared types.
"""

from __future__ import annotations

import inspect
import types
import typing
from dataclasses import dataclass
from typing import Any, Awaitable, Callable, Union

from daemon.auth import Peer, Role
from daemon.protocol import METHOD_NOT_FOUND, NOT_PERMITTED, RpcError, invalid_params

__all__ = ["CallContext", "Method", "Role", "method", "METHODS", "lookup"]


@dataclass
class CallContext:
    """What a handler may use: the daemon, who is calling, and their connection."""

    daemon: Any
    peer: Peer
    connection: Any = None

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


METHODS: dict[str, Method] = {}


def method(name: str, role: Role) -> Callable[[Handler], Handler]:
    def register(handler: Handler) -> Handler:
        signature = inspect.signature(handler)
        params = dict(list(signature.parameters.items())[1:])  # drop ctx
        hints = typing.get_type_hints(handler)
        METHODS[name] = Method(name, role, handler, params, hints)
        return handler

    return register


def lookup(name: str) -> Method:
    try:
        return METHODS[name]
    except KeyError:
        raise RpcError(METHOD_NOT_FOUND, f"no such method: {name}") from None


def _accepts(value: Any, hint: Any) -> bool:
    if hint is Any:
        return True
    origin = typing.get_origin(hint)
    if origin in (Union, types.UnionType):
        return any(_accepts(value, arg) for arg in typing.get_args(hint))
    if origin is typing.Literal:
        return value in typing.get_args(hint)
    if hint is type(None):
        return value is None
    if hint is bool:
        return isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if hint is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if origin in (list, tuple):
        args = typing.get_args(hint)
        return isinstance(value, list) and (not args or all(_accepts(v, args[0]) for v in value))
    if origin is dict or hint is dict:
        return isinstance(value, dict)
    if isinstance(hint, type):
        return isinstance(value, hint)
    return True


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
    unknown = sorted(set(params) - set(m.params))
    if unknown:
        raise invalid_params(unknown[0], f"unknown parameter for {m.name}; accepted: {', '.join(m.params) or 'none'}")
    for name, param in m.params.items():
        if name not in params:
            if param.default is inspect.Parameter.empty:
                raise invalid_params(name, "required")
            continue
        hint = m.hints.get(name, Any)
        if not _accepts(params[name], hint):
            raise invalid_params(name, f"must be {_describe(hint)}, got {type(params[name]).__name__}")
    return params


async def call(m: Method, ctx: CallContext, params: dict[str, Any]) -> Any:
    ctx.require(m.role, m.name)
    return await m.handler(ctx, **bind(m, params))
