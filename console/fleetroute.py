"""Following a job's outputs to the box of the fleet that holds them (docs/fleet.md, Outputs).

A job's outputs stay encrypted on the box that ran it. Another box asked for them answers -32010
with `data` = `{reason: "elsewhere", box, reach, socket}`. The operator's client config maps box
names to sockets that reach those boxes (`[fleet] sockets`, typically forwarded over SSH);
`where_held` does the work again through the socket of the box named, once (through the console's
attached link to that box when it has one). Without a mapping the refusal stands: its message
says how to reach the box and how to map it.
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
                     sockets: Callable[[], Mapping[str, str]],
                     attached: Callable[[str], Call | None] = lambda box: None) -> T:
    """`work(here)`; when that is refused because the outputs are on another box, `work` again
    through that box's link when the console is attached to it (`attached(box)`, console.fleetlinks),
    else through the socket `sockets()` (read only then) maps it to, once. Raises the refusal when the
    box has no socket here, DaemonUnavailable naming the box and socket when that socket does not answer."""
    try:
        return await work(here)
    except RpcError as exc:
        box = held_elsewhere(exc)
        if box is None:
            raise
        linked = attached(box)
        path = sockets().get(box) if linked is None else None
        if linked is None and path is None:
            raise
    if linked is not None:  # that link checked, when it attached, that its socket reaches the box
        return await work(linked)
    assert path is not None
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
