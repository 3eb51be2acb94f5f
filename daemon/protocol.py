"""JSON-RPC 2.0 over a Unix socket, one JSON object per line.

Framing and message shapes only: no business logic and nothing heavy, so that the console and
the CLI import this quickly (no torch).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

MAX_LINE = 1024 * 1024
"""Most bytes one line may carry, newline excluded. asyncio streams must be given this limit."""

STREAM_LIMIT = MAX_LINE + 1

TOPICS = ("job", "queue", "metrics", "alert", "audit")

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
    def from_json(cls, error: Any) -> "RpcError":
        if not isinstance(error, dict):
            return cls(INTERNAL_ERROR, f"malformed error object: {error!r}")
        return cls(int(error.get("code", INTERNAL_ERROR)), str(error.get("message", "")), error.get("data"))


def invalid_params(field_name: str, reason: str) -> RpcError:
    return RpcError(INVALID_PARAMS, f"invalid {field_name}: {reason}", {"field": field_name, "reason": reason})


def encode(message: Any) -> bytes:
    """One message as a newline-terminated UTF-8 line."""
    return json.dumps(message, ensure_ascii=False, separators=(",", ":")).encode("utf-8") + b"\n"


def decode(line: bytes) -> Any:
    """Parse one line; raise RpcError(PARSE_ERROR) naming what was wrong."""
    try:
        return json.loads(line.decode("utf-8"))
    except UnicodeDecodeError as exc:
        raise RpcError(PARSE_ERROR, f"parse error: line is not UTF-8 ({exc.reason} at byte {exc.start})") from None
    except json.JSONDecodeError as exc:
        raise RpcError(PARSE_ERROR, f"parse error: {exc.msg} at line {exc.lineno} column {exc.colno}") from None


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
        if req_id is None or isinstance(req_id, (str, int)) and not isinstance(req_id, bool):
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


def event(topic: str, data: dict[str, Any]) -> dict[str, Any]:
    return {"jsonrpc": "2.0", "method": "event", "params": {"topic": topic, "data": data}}
