"""The frame the four main panes share: a numbered border title and one widget that takes focus."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Protocol, cast

from textual.containers import Vertical
from textual.widget import Widget

if TYPE_CHECKING:
    from console.fleetlinks import FleetLinks


class Console(Protocol):
    """What the panes and screens need from the app."""

    readonly: bool
    lookback_at: float | None
    fleet_sockets: dict[str, str]

    @property
    def links(self) -> FleetLinks: ...

    async def rpc(self, method: str, /, **params: Any) -> Any: ...

    async def rpc_where_held(self, method: str, /, **params: Any) -> Any: ...

    def report(self, what: str, exc: BaseException) -> None: ...

    def clock(self) -> float: ...


def console_of(widget: Widget) -> Console:
    return cast(Console, widget.app)


class Pane(Vertical):
    """Subclasses set `number` and `title`, and say which child takes focus."""

    number: int = 0
    title: str = ""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(classes="pane", **kwargs)
        self.border_title = f"{self.number} {self.title}"

    def focus_target(self) -> Widget:
        return self

    def set_info(self, info: str) -> None:
        self.border_title = f"{self.number} {self.title}" + (f" · {info}" if info else "")
