"""systemd's notify protocol (`Type=notify`, `WatchdogSec=`), spoken over a plain datagram socket.

`READY=1` goes out once the socket listens and the state is open; `STATUS=` lines carry the queue
and worker state; `STOPPING=1` marks the drain; `WATCHDOG=1` is sent only while the event loop
runs this code and every health check passes, so a wedged worker or a dead background task stops
the pings and systemd restarts the service (sd_notify(3), sd_watchdog_enabled(3)).
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
from collections.abc import Callable, Mapping

log = logging.getLogger("sai.systemd")

# How often STATUS= is refreshed when no watchdog asks for more.
STATUS_PERIOD = 5.0


class Notifier:
    """Sends notify datagrams to `$NOTIFY_SOCKET`; does nothing when systemd did not set it."""

    def __init__(self, address: str | None, watchdog_usec: int | None) -> None:
        self.address = address
        self.watchdog_usec = watchdog_usec
        self._socket: socket.socket | None = None
        self._last_status = ""

    @classmethod
    def from_environment(cls, environ: Mapping[str, str] = os.environ) -> Notifier:
        address = environ.get("NOTIFY_SOCKET") or None
        usec: int | None = None
        if environ.get("WATCHDOG_USEC", "").isdigit() and int(environ["WATCHDOG_USEC"]) > 0:
            pid = environ.get("WATCHDOG_PID", "")
            if not pid or pid == str(os.getpid()):
                usec = int(environ["WATCHDOG_USEC"])
        return cls(address, usec)

    @property
    def enabled(self) -> bool:
        return self.address is not None

    @property
    def ping_interval(self) -> float:
        """Half the watchdog period (systemd's advice), else the status refresh period."""
        return min(STATUS_PERIOD, self.watchdog_usec / 2e6) if self.watchdog_usec else STATUS_PERIOD

    def send(self, *fields: str) -> bool:
        if self.address is None:
            return False
        target = "\0" + self.address[1:] if self.address.startswith("@") else self.address
        try:
            if self._socket is None:
                self._socket = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
            self._socket.sendto("\n".join(fields).encode(), target)
            return True
        except OSError as exc:
            log.warning("could not notify systemd at %s: %s", self.address, exc)
            return False

    def ready(self, status: str) -> None:
        self._last_status = status
        self.send("READY=1", f"STATUS={status}", f"MAINPID={os.getpid()}")

    def status(self, status: str) -> None:
        if status != self._last_status:
            self._last_status = status
            self.send(f"STATUS={status}")

    def stopping(self, status: str) -> None:
        self._last_status = status
        self.send("STOPPING=1", f"STATUS={status}")

    async def keep_alive(self, describe: Callable[[], str], unhealthy: Callable[[], str | None]) -> None:
        """Refresh STATUS= and feed the watchdog while `unhealthy()` returns None; log what stops it."""
        withheld: str | None = None
        while True:
            await asyncio.sleep(self.ping_interval)
            problem = unhealthy()
            if problem is None:
                self.status(describe())
                if self.watchdog_usec:
                    self.send("WATCHDOG=1")
                if withheld:
                    log.warning("watchdog fed again: %s is over", withheld)
                withheld = None
            elif problem != withheld:
                withheld = problem
                log.error("watchdog not fed: %s", problem)
                self.status(f"unhealthy: {problem}")

    def close(self) -> None:
        if self._socket is not None:
            self._socket.close()
            self._socket = None
