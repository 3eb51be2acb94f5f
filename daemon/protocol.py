"""JSON-RPC 2.0 over a Unix socket, one JSON object per line.

Framing and message shapes only: no business logic and nothing heavy, so that the console and
the CLI import this quickly (no torch).
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, get_args

MAX_LINE = 1024 * 1024
"""Most bytes one line may carry, newline excluded. asyncio streams must be given this limit."""

STREAM_LIMIT = MAX_LINE + 1

MAX_INT_DIGITS = 64
"""Longest integer literal a request may carry: nothing needs more, and long ones cost quadratic time."""

TOPICS = ("job", "queue", "metrics", "alert", "audit")

Priority = Literal["low", "normal", "high", "critical"]
PRIORITIES: tuple[Priority, ...] = get_args(Priority)
"""A job's priority names, lowest first; the queue stores a job's priority as its index here."""

# Standard JSON-RPC codes.
PARSE_ERROR = -32700
INVALID_REQUEST = -32600
METHOD_NOT_FOUND = -32601
INVALID_PARAMS = -32602
INTERNAL_ERROR = -32603
# Application codes (DESIGN.md).
NOT_PERMITTED = -32001
NOT_FOUND = -32002
RATE_LIMITED = -32003
CONFLICT = -32004
REFUSED_BY_POLICY = -32005
UNAVAILABLE = -32010


@dataclass
class RpcError(Exception):
    """An error the daemon reports to a client; `data` carries machine-readable detail."""

    code: int
    message: str
    data: dict[str, Any] | None = field(default=None)

    def __post_init__(self) -> None:
        super().__init__(self.message)

    def __str__(self) -> str:
        return self.message

    def to_json(self) -> dict[str, Any]:
        error: dict[str, Any] = {"code": self.code, "message": self.message}
        if self.data is not None:
            error["data"] = self.data
        return error

    @classmethod
    def from_json(cls, error: Any) -> RpcError:
        if not isinstance(error, dict):
            return cls(INTERNAL_ERROR, f"malformed error object: {error!r}")
        return cls(int(error.get("code", INTERNAL_ERROR)), str(error.get("message", "")), error.get("data"))


ECHO_LIMIT = 200
"""Characters of a client's own value an error message repeats back (the rest is counted)."""


def echo(value: str) -> str:
    """A client-supplied string as an error repeats it: whole when short, else cut and counted, so
    an error about a 1 MiB value is not itself over the 1 MiB line limit."""
    if len(value) <= ECHO_LIMIT:
        return value
    return f"{value[:ECHO_LIMIT]}… ({len(value)} characters)"


def invalid_params(field_name: str, reason: str) -> RpcError:
    return RpcError(INVALID_PARAMS, f"invalid {field_name}: {reason}", {"field": field_name, "reason": reason})


_ENCODER = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"))


def encode(message: Any) -> bytes:
    """One message as a newline-terminated UTF-8 line."""
    return _ENCODER.encode(message).encode("utf-8") + b"\n"


LIST_ROOM = MAX_LINE - 64 * 1024
"""What the items of one reply's list may take of a line, leaving room for the envelope and the
reply's other fields."""


def items_that_fit(items: Sequence[Any], room: int = LIST_ROOM) -> int:
    """How many of `items`, from the first, fit in `room` bytes as a JSON list: a page is cut there
    so that its reply keeps to the line limit, which holds in both directions."""
    used = 2
    for count, item in enumerate(items):
        used += len(_ENCODER.encode(item).encode("utf-8")) + 1
        if used > room:
            return count
    return len(items)


_ESCAPED_SURROGATE = re.compile(r"\\u[dD][89a-fA-F]")
_LONG_NUMBER = re.compile(rf"\d{{{MAX_INT_DIGITS + 1}}}|[eE][+]?0*\d{{3}}")
"""A run of digits or an exponent that may not fit: only then are numbers parsed one by one
through the checks (a Python call per number would make a line of numbers 15 times slower)."""


def _refuse_constant(name: str) -> Any:
    raise RpcError(PARSE_ERROR, f"parse error: {name} is not a JSON number")


def _finite_float(text: str) -> float:
    value = float(text)
    if math.isinf(value):
        raise RpcError(PARSE_ERROR, f"parse error: number {text[:40]} is out of range")
    return value


def _bounded_int(text: str) -> int:
    if len(text.lstrip("-")) > MAX_INT_DIGITS:
        raise RpcError(PARSE_ERROR, f"parse error: integer of {len(text.lstrip('-'))} digits; "
                                    f"at most {MAX_INT_DIGITS} are accepted")
    return int(text)


def _lone_surrogate(value: Any) -> str | None:
    """The first string (key or value) holding a lone UTF-16 surrogate, which `\\uD800`-style
    escapes can produce and UTF-8 cannot carry; None when there is none."""
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, dict):
            stack.extend(item.keys())
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
        elif isinstance(item, str):
            try:
                item.encode("utf-8")
            except UnicodeEncodeError:
                return item
    return None


_STRICT = json.JSONDecoder(parse_constant=_refuse_constant)
_STRICT_NUMBERS = json.JSONDecoder(parse_constant=_refuse_constant, parse_float=_finite_float, parse_int=_bounded_int)


def decode(line: bytes, *, strict: bool = False) -> Any:
    """Parse one line; raise RpcError(PARSE_ERROR) naming what was wrong.

    `strict` (the daemon reading requests) also refuses what `json.loads` lets through but the
    daemon would trip on later: NaN and Infinity, numbers out of range, integers over
    MAX_INT_DIGITS digits and lone surrogates. Nesting deeper than the parser's recursion limit
    is a parse error either way."""
    try:
        text = line.decode("utf-8")
        if not strict:
            value = json.loads(text)
        else:
            value = (_STRICT_NUMBERS if _LONG_NUMBER.search(text) else _STRICT).decode(text)
    except UnicodeDecodeError as exc:
        raise RpcError(PARSE_ERROR, f"parse error: line is not UTF-8 ({exc.reason} at byte {exc.start})") from None
    except json.JSONDecodeError as exc:
        raise RpcError(PARSE_ERROR, f"parse error: {exc.msg} at line {exc.lineno} column {exc.colno}") from None
    except RecursionError:
        raise RpcError(PARSE_ERROR, "parse error: nested too deeply") from None
    if strict and _ESCAPED_SURROGATE.search(text) and _lone_surrogate(value) is not None:
        raise RpcError(PARSE_ERROR, "parse error: a string holds a lone UTF-16 surrogate escape, which is not text")
    return value


@dataclass(frozen=True)
class Request:
    method: str
    params: dict[str, Any]
    id: str | int | None
    is_notification: bool


def parse_request(obj: Any) -> Request:
    """Check one JSON-RPC request object; raise RpcError(INVALID_REQUEST) naming the fault."""
    if not isinstance(obj, dict):
        raise RpcError(INVALID_REQUEST, f"invalid request: expected a JSON object, got {type(obj).__name__}")
    if obj.get("jsonrpc") != "2.0":
        raise RpcError(INVALID_REQUEST, 'invalid request: "jsonrpc" must be "2.0"')
    method = obj.get("method")
    if not isinstance(method, str) or not method:
        raise RpcError(INVALID_REQUEST, 'invalid request: "method" must be a non-empty string')
    req_id = obj.get("id")
    if "id" in obj and not (req_id is None or isinstance(req_id, str)
                            or (isinstance(req_id, int) and not isinstance(req_id, bool))):
        raise RpcError(INVALID_REQUEST, 'invalid request: "id" must be a string, an integer or null')
    params = obj.get("params", {})
    if isinstance(params, list):
        if params:
            raise RpcError(INVALID_PARAMS, "invalid params: parameters are named; send an object",
                           {"field": "params", "reason": "positional parameters are not supported"})
        params = {}
    if not isinstance(params, dict):
        raise RpcError(INVALID_PARAMS, "invalid params: must be an object",
                       {"field": "params", "reason": f"expected an object, got {type(params).__name__}"})
    return Request(method, params, req_id, "id" not in obj)


def request_id_of(obj: Any) -> Any:
    """The id to answer an invalid request with (null when none can be read)."""
    if isinstance(obj, dict):
        req_id = obj.get("id")
        if req_id is None or (isinstance(req_id, (str, int)) and not isinstance(req_id, bool)):
            return req_id
    return None


def request(method: str, params: dict[str, Any] | None, req_id: int | str | None) -> dict[str, Any]:
    msg: dict[str, Any] = {"jsonrpc": "2.0", "method": method, "params": params or {}}
    if req_id is not None:
        msg["id"] = req_id
    return msg


def result(req_id: Any, value: Any) -> dict[str, Any]:
    return {"jsonrpc": "2.0", "id": req_id, "result": value}


def error(req_id: Any, err: RpcError) -> dict[str, Any]:
    return {"jsonrpc": "2.0", "id": req_id, "error": err.to_json()}


def event(topic: str, data: Mapping[str, Any]) -> dict[str, Any]:
    return {"jsonrpc": "2.0", "method": "event", "params": {"topic": topic, "data": data}}
