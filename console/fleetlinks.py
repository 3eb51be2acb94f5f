"""A fleet member's console attached to the fleet's other boxes too (docs/fleet.md, The console
sees the fleet).

The client config's `[fleet] sockets` maps box names to sockets that reach them (forwarded over SSH,
typically). Once the fleet pane knows which box the console is attached to (fleet.status `box`),
`FleetLinks.attach` opens one more DaemonLink per other mapped box: it checks that the socket
reaches that box (its daemon.status `installation`), subscribes to EXTRA_TOPICS and reconnects with
backoff as the primary link does. Its messages carry the box and come here: a link's state goes to
the fleet pane's `link` column, alerts to the alerts pane (named by box), and job changes and
progress bubble on to the app, whose handlers move the queue pane as they do for this box's jobs.
A socket that does not answer, or reaches another box, only marks its box's link down: the primary
link and the console go on. A box stopped (SIGSTOP, hung) keeps its connection open but says
nothing: each attached link is asked daemon.status every PING_EVERY seconds, and one that does not
answer within PING_TIMEOUT is dropped and reconnects.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from typing import Any

from textual import work
from textual.message import Message
from textual.timer import Timer
from textual.widget import Widget

from console.connection import AlertChanged, DaemonLink, LinkDown, LinkUp
from console.fleetroute import Call
from console.widgets.alerts_pane import AlertsPane
from console.widgets.pane import console_of
from daemon.client import DaemonUnavailable
from daemon.protocol import RpcError

EXTRA_TOPICS = ("job", "alert")
"""What the console follows of another box: its jobs' states and progress, and its alerts."""
PING_EVERY = 5.0
PING_TIMEOUT = 5.0
"""Seconds between two daemon.status of an attached link, and how long one may take before the link
is taken for down."""
ATTACHED = "attached"
CONNECTING = "connecting…"


class FleetLinks(Widget):
    """The extra links, by box; shows nothing itself (the fleet pane draws `cell`)."""

    DEFAULT_CSS = "FleetLinks { display: none; }"

    class Changed(Message):
        """A link was made, came up or went down: the fleet pane redraws its link column."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.this_box: str | None = None
        self.links: dict[str, DaemonLink] = {}
        self.states: dict[str, str] = {}
        """Box → ATTACHED, CONNECTING or why it is down."""
        self._pinger: Timer | None = None
        self._pinging = False

    def attach(self, this_box: str, sockets: Mapping[str, str]) -> None:
        """Attach to every box `sockets` maps other than `this_box` (once per box attached to: a
        console whose link reaches another box than before starts over)."""
        if this_box == self.this_box:
            return
        self.workers.cancel_node(self)
        self.this_box = this_box
        self.links = {box: DaemonLink(self, path, box=box, topics=EXTRA_TOPICS)
                      for box, path in sockets.items() if box != this_box}
        self.states = dict.fromkeys(self.links, CONNECTING)
        for link in self.links.values():
            link.start()
        if self._pinger is not None:
            self._pinger.stop()
        self._pinging = False
        self._pinger = self.set_interval(PING_EVERY, self._tick) if self.links else None
        self.screen.query_one(AlertsPane).show_boxes(this_box if self.links else None)
        self.post_message(self.Changed())

    def attached(self) -> dict[str, Call]:
        """The other boxes attached now (connected, and found to be the box mapped), by name."""
        return {box: link.call for box, link in self.links.items()
                if self.states.get(box) == ATTACHED and link.connected}

    def call_of(self, box: str | None) -> Call | None:
        """The call of `box`'s attached link; None for this box, or one not attached now."""
        return self.attached().get(box) if box else None

    async def call(self, box: str | None, method: str, /, **params: Any) -> Any:
        """`method` on the daemon of `box`: this box's (None) through the console's link, another's
        through its attached link."""
        if box is None or box == self.this_box:
            return await console_of(self).rpc(method, **params)
        call = self.call_of(box)
        if call is None:
            why = self.states.get(box, "no socket for it in this client's [fleet] sockets")
            raise DaemonUnavailable(f"this console is not attached to box {box!r} ({why})")
        return await call(method, **params)

    def retry_now(self) -> None:
        """Skip the backoff wait of every link that is down (the operator asked to refresh)."""
        for box, link in self.links.items():
            if self.states.get(box) != ATTACHED:
                link.retry_now()

    def cell(self, box: str) -> tuple[str, str]:
        """The fleet pane's `link` cell of `box` and the level to draw it in."""
        if box == self.this_box:
            return "this", "ok"
        state = self.states.get(box)
        if state is None:
            return "not mapped", "ok"
        return state, "ok" if state == ATTACHED else "warning" if state == CONNECTING else "critical"

    def unlisted(self, listed: set[str]) -> str:
        """The mapped boxes that the fleet's registry does not list, with their links' states."""
        return "; ".join(f"{box}: {self.states[box]}" for box in sorted(self.states) if box not in listed)

    def on_link_up(self, message: LinkUp) -> None:
        message.stop()
        if (box := message.box) is not None and box in self.links:
            self.states[box] = ATTACHED
            self.post_message(self.Changed())
            self._load_alerts(box)

    def on_link_down(self, message: LinkDown) -> None:
        message.stop()
        if (box := message.box) is not None and box in self.links:
            self.states[box] = f"down: {message.reason} (retry in {message.retry_in:.0f} s)"
            self.post_message(self.Changed())

    def on_alert_changed(self, message: AlertChanged) -> None:
        message.stop()
        if message.box in self.links and console_of(self).lookback_at is None:
            self.screen.query_one(AlertsPane).apply(message.data, box=message.box)

    def _tick(self) -> None:
        if not self._pinging:  # one may wait up to PING_TIMEOUT: never cut short by the next
            self._pinging = True
            self._ping()

    @work(group="fleet-ping", exit_on_error=False)
    async def _ping(self) -> None:
        try:
            await asyncio.gather(*(self._ping_one(self.links[box]) for box in self.attached()))
        finally:
            self._pinging = False

    @staticmethod
    async def _ping_one(link: DaemonLink) -> None:
        try:
            await asyncio.wait_for(link.call("daemon.status"), PING_TIMEOUT)
        except (TimeoutError, DaemonUnavailable):
            await link.drop(f"no answer to daemon.status in {PING_TIMEOUT:g} s (stopped or hung?)")
        except RpcError:
            pass  # it answers

    @work(group="fleet-alerts", exit_on_error=False)
    async def _load_alerts(self, box: str) -> None:
        link = self.links.get(box)
        if link is not None:
            await self.screen.query_one(AlertsPane).reload_box(box, link.call, console_of(self).lookback_at)
