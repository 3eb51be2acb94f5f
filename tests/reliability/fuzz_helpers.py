"""Helpers of the protocol fuzz suite: a raw blocking socket client (frames go out exactly as
written), admission-only daemons and the checks run against them, an oracle for what a JSON-RPC
envelope must get back, a type oracle written from the method signatures independently of the
daemon's own checker, hypothesis strategies, and the daemon's memory figures."""

from __future__ import annotations

import json
import os
import socket
import tempfile
import time
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Union

import psutil
from hypothesis import strategies as st

from tests.harness import DaemonProcess

EXAMPLES = int(os.environ.get("SAI_FUZZ_EXAMPLES", "0")) or None
"""SAI_FUZZ_EXAMPLES=N raises every hypothesis test here to N examples (a long run)."""

PARSE_ERROR, INVALID_REQUEST, METHOD_NOT_FOUND, INVALID_PARAMS, INTERNAL_ERROR = -32700, -32600, -32601, -32602, -32603
RATE_LIMITED, UNAVAILABLE = -32003, -32010

SAFE_METHODS = ("daemon.status", "job.list", "job.get", "alerts.list", "metrics.snapshot", "audit.tail")
"""Methods the envelope fuzzing may call with whatever params it draws: none changes state."""


def examples(default: int) -> int:
    return EXAMPLES or default


# -- the wire -------------------------------------------------------------------------------

def strict_json(line: bytes) -> Any:
    """What a conforming client reads: UTF-8, and JSON without NaN or Infinity."""
    def refuse(name: str) -> Any:
        raise ValueError(f"the daemon sent {name}, which is not JSON")

    return json.loads(line.decode("utf-8"), parse_constant=refuse)


class RawClient:
    """A blocking Unix socket that sends bytes as given and reads replies line by line."""

    def __init__(self, path: Path, timeout: float = 10.0) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.connect(str(path))  # blocking: a full listen backlog makes it wait, not fail
        self.sock.settimeout(timeout)
        self._buffer = bytearray()
        self.sent = 0

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)
        self.sent += 1

    def line(self) -> bytes | None:
        """The next line, or None when the daemon closed the connection first."""
        while b"\n" not in self._buffer:
            try:
                chunk = self.sock.recv(1 << 20)
            except ConnectionResetError:
                chunk = b""
            if not chunk:
                return None
            self._buffer += chunk
        end = self._buffer.index(b"\n") + 1
        line = bytes(self._buffer[:end])
        del self._buffer[:end]
        return line

    def message(self) -> Any:
        line = self.line()
        assert line is not None, "the daemon closed the connection instead of answering"
        return strict_json(line)

    def call(self, method: str, req_id: Any = "probe", **params: Any) -> dict[str, Any]:
        self.send(json.dumps({"jsonrpc": "2.0", "id": req_id, "method": method, "params": params}).encode() + b"\n")
        return self.message()

    def closed_by_daemon(self, timeout: float = 10.0) -> bool:
        """Read what is left; True once the daemon has closed its end."""
        self.sock.settimeout(timeout)
        try:
            while True:
                chunk = self.sock.recv(1 << 20)
                if not chunk:
                    return True
        except ConnectionResetError:
            return True
        except TimeoutError:
            return False

    def close(self) -> None:
        self.sock.close()


def exchange(path: Path, frame: bytes, expect: int) -> list[Any]:
    """Send `frame` and a daemon.status probe on one connection; return what came back other than
    the probe's reply. Requests run concurrently, so a reply to `frame` may come before or after
    the probe's: read until the probe's reply and `expect` others have come, then send a second
    probe, so that an unexpected extra reply is caught before its answer."""
    client = RawClient(path)
    others: list[Any] = []

    def probe(probe_id: str, expect: int) -> None:
        client.send(json.dumps({"jsonrpc": "2.0", "id": probe_id, "method": "daemon.status"}).encode() + b"\n")
        answered = False
        while not answered or len(others) < expect:
            message = client.message()
            if isinstance(message, dict) and message.get("id") == probe_id and "result" in message:
                answered = True
            else:
                others.append(message)

    try:
        client.send(frame)
        probe("probe-1", expect)
        probe("probe-2", 0)
        return others
    finally:
        client.close()


# -- daemons and frames -----------------------------------------------------------------------

IDLE = {"model": {"preload": False},
        "queue": {"start_paused": True, "burst": 10**6, "rate_per_minute": 1e9, "max_queued_per_user": 10**6}}


def start_daemon(daemon_config: dict[str, Any]) -> tuple[DaemonProcess, Path]:
    """A daemon with no worker, its queue paused and rate limits out of the way; `daemon_config`
    is its `[daemon]` section."""
    root = Path(tempfile.mkdtemp(prefix="sai-fz-", dir="/tmp"))  # socket paths are limited to 107 bytes
    daemon = DaemonProcess.create(root, {**IDLE, "daemon": daemon_config})
    return daemon.start(), root


def assert_serving(daemon: DaemonProcess, timeout: float = 5.0) -> float:
    """The daemon process is alive and a fresh client gets daemon.status; returns the latency."""
    assert daemon.proc is not None and daemon.proc.poll() is None, daemon.read_log()[-3000:]
    started = time.monotonic()
    client = RawClient(daemon.socket, timeout)
    try:
        reply = client.call("daemon.status", req_id="fresh")
    finally:
        client.close()
    assert reply.get("id") == "fresh" and reply["result"]["pid"] == daemon.proc.pid, reply
    return time.monotonic() - started


def request(method: str, req_id: Any = 1, **params: Any) -> bytes:
    return json.dumps({"jsonrpc": "2.0", "id": req_id, "method": method, "params": params}).encode()


def error_of(message: Any) -> dict[str, Any]:
    assert isinstance(message, dict) and "error" in message and "result" not in message, message
    assert message["error"]["message"], message
    return message["error"]


def fill_jobs(daemon: DaemonProcess, run: FuzzRun, count: int, size: int) -> None:
    """Submit `count` jobs in batches of `size` (the queue is paused: they stay queued)."""
    client = RawClient(daemon.socket, timeout=60)
    for first in range(0, count, size):
        batch = [{"jsonrpc": "2.0", "id": i, "method": "job.submit", "params": {"prompt": f"fuzz filler {i}"}}
                 for i in range(first, min(count, first + size))]
        client.send(json.dumps(batch).encode() + b"\n")
        replies = client.message()
        assert all("result" in r for r in replies), replies
    run.tried(-(-count // size))
    client.close()


def flood(daemon: DaemonProcess, count: int) -> tuple[list[RawClient], list[dict[str, Any]]]:
    """Open `count` connections one after another; (those served, the errors of those refused)."""
    served, refused = [], []
    for i in range(count):
        client = RawClient(daemon.socket)
        try:
            client.send(request("daemon.status", req_id=i) + b"\n")
        except (BrokenPipeError, ConnectionResetError):
            pass  # refused already: its error line is waiting to be read
        reply = client.message()
        if "result" in reply:
            served.append(client)
        else:
            refused.append(error_of(reply))
            assert client.closed_by_daemon(5)
            client.close()
    return served, refused


# -- oracles ----------------------------------------------------------------------------------

def _valid_id(value: Any) -> bool:
    return value is None or isinstance(value, str) or (isinstance(value, int) and not isinstance(value, bool))


@dataclass(frozen=True)
class Expected:
    """What one request object must get back, from JSON-RPC 2.0 and docs/protocol.md alone."""

    reply: bool
    code: int | None  # None: the method decides (a result or its own error)
    reply_id: Any = None


def expected_for(obj: Any, methods: typing.Collection[str]) -> Expected:
    if not isinstance(obj, dict):
        return Expected(True, INVALID_REQUEST)
    reply_id = obj.get("id") if _valid_id(obj.get("id")) else None
    method = obj.get("method")
    if obj.get("jsonrpc") != "2.0" or not isinstance(method, str) or not method or not _valid_id(obj.get("id")):
        return Expected(True, INVALID_REQUEST, reply_id)
    params = obj.get("params", {})
    if not isinstance(params, (dict, list)) or (isinstance(params, list) and params):
        return Expected(True, INVALID_PARAMS, reply_id)
    if method not in methods:
        return Expected("id" in obj, METHOD_NOT_FOUND, reply_id)
    return Expected("id" in obj, None, reply_id)


def accepts(hint: Any, value: Any) -> bool:
    """Whether a JSON value fits a handler's parameter annotation (bool is not a number here)."""
    origin = typing.get_origin(hint)
    if hint is Any:
        return True
    if origin in (Union, types.UnionType):
        return any(accepts(arg, value) for arg in typing.get_args(hint))
    if origin is Literal:
        return isinstance(value, str) and value in typing.get_args(hint)
    if hint is type(None):
        return value is None
    if hint is bool:
        return isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if hint is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if hint is str:
        return isinstance(value, str)
    if origin is list:
        return isinstance(value, list) and all(accepts(typing.get_args(hint)[0], v) for v in value)
    if hint is dict or origin is dict:
        return isinstance(value, dict)
    raise TypeError(f"the fuzz oracle knows no parameter type {hint!r}: teach accepts() about it")


def well_typed(hint: Any) -> Any:
    """One value of the annotated type, to fill the required parameters that are not under test."""
    for candidate in ("x", 1, 1.0, False, [], None):
        if accepts(hint, candidate):
            return candidate
    if typing.get_origin(hint) is Literal:
        return typing.get_args(hint)[0]
    raise TypeError(f"no filler value for {hint!r}")


# -- strategies -------------------------------------------------------------------------------

scalars = (st.none() | st.booleans() | st.integers(-(2**70), 2**70)
           | st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=20))
json_values = st.recursive(scalars, lambda inner: st.lists(inner, max_size=4)
                           | st.dictionaries(st.text(max_size=8), inner, max_size=4), max_leaves=10)
envelopes = st.fixed_dictionaries({}, optional={
    "jsonrpc": st.just("2.0") | json_values,
    "id": st.integers(-(2**40), 2**40) | st.text(max_size=12) | json_values,
    "method": st.sampled_from(SAFE_METHODS + ("", "no.such", "job.submitx")) | json_values,
    "params": st.just({}) | st.just([]) | json_values,
    "extra": json_values,
})
"""Request-shaped objects whose fields are right, wrong or missing (methods from SAFE_METHODS)."""


def not_utf8(data: bytes) -> bool:
    try:
        data.decode("utf-8")
    except UnicodeDecodeError:
        return True
    return False


BAD_UTF8_PIECES = (b"\xff", b"\xfe\xff", b"\xc0\xaf", b"\xed\xa0\x80", b"\xf8\x88\x80\x80\x80", b"\x80",
                   b"\xe2\x82", b"\xf4\x90\x80\x80")
"""Invalid bytes of each kind: never valid, overlong, an encoded surrogate, 5-byte form, a lone
continuation byte, a truncated sequence, past U+10FFFF."""


# -- the daemon's memory ----------------------------------------------------------------------

def rss_mib(pid: int) -> float:
    return psutil.Process(pid).memory_info().rss / 2**20


def peak_rss_mib(pid: int) -> float:
    """VmHWM: the most resident memory the process has ever had."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no VmHWM for pid {pid}")


@dataclass
class FuzzRun:
    """Counts over the whole module: frames sent, and the daemon's memory before and after."""

    socket: Path
    pid: int
    start_rss_mib: float
    frames: int = 0
    started: float = field(default_factory=time.monotonic)

    def tried(self, n: int = 1) -> None:
        self.frames += n
