"""Following a job's outputs to the box of the fleet that holds them (docs/fleet.md, Outputs).

A job's outputs stay encrypted on the box that ran it. Another box asked for them answers -32010
with `data` = `{reason: "elsewhere", box, reach, socket}`. The operator's client config maps box
names to sockets that reach those boxes (`[fleet] sockets`, typically forwarded over SSH);
`where_held` does the work again through the socket of the box named, once. Without a mapping
the refusal stands: its message says how to reach the box and how to map it.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from typing import Any, TypeVar

from daemon.client import DaemonClient, DaemonUnavailable
from daemon.protocol import UNAVAILABLE, RpcError

T = TypeVar("T")
Call = Callable[..., Awaitable[Any]]
"""`call(method, **params)`: a DaemonClient's `call`, or the console's `rpc`."""

ELSEWHERE = "elsewhere"


def held_elsewhere(exc: RpcError) -> str | None:
    """The box a refusal names as the one holding the outputs asked for; None for any other error."""
    data = exc.data if isinstance(exc.data, dict) else {}
    box = data.get("box")
    if exc.code == UNAVAILABLE and data.get("reason") == ELSEWHERE and isinstance(box, str):
        return box
    return None


async def where_held(work: Callable[[Call], Awaitable[T]], here: Call,
                     sockets: Callable[[], Mapping[str, str]]) -> T:
    """`work(here)`; when that is refused because the outputs are on another box that `sockets()`
    (read only then) maps to a socket, `work` again through that socket. Raises the refusal when the
    box has no socket here, DaemonUnavailable naming the box and socket when that socket does not answer."""
    try:
        return await work(here)
    except RpcError as exc:
        box = held_elsewhere(exc)
        path = None if box is None else sockets().get(box)
        if box is None or path is None:
            raise
    try:
        client = await DaemonClient.connect(path)
    except DaemonUnavailable as exc:
        denied = isinstance(exc.__cause__, PermissionError)
        why = "this user may not connect to" if denied else "nothing answers on"
        raise DaemonUnavailable(f"the outputs are on box {box!r}, but {why} {path}, its socket in this client's "
                                f"[fleet] sockets" + ("" if denied else "; is the SSH forwarding to that box up?")
                                ) from exc.__cause__
    try:
        return await work(client.call)
    except RpcError as exc:
        if held_elsewhere(exc) is None:
            raise
        raise RpcError(exc.code, f"{path}, the socket [fleet] sockets gives for box {box!r}, reaches another "
                       f"box: {exc.message}", exc.data) from None
    finally:
        await client.close()
