"""`sai` with no command: attach the console to the daemon on the socket, or start one embedded in
this process when none answers; the terminal, SIGTERM and SIGHUP (a dropped SSH session) handled
so that an embedded daemon always drains and stops."""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import sys
from pathlib import Path
from typing import Any

from console.app import SaiConsole
from console.connection import Embedded, start_embedded
from daemon.client import DaemonClient, DaemonUnavailable


def _terminal_driver(fd: int) -> Any:
    """Textual's driver, writing to the terminal on `fd` while fd 2 carries the embedded daemon's log."""
    from textual.drivers.linux_driver import LinuxDriver

    class TerminalDriver(LinuxDriver):
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            self._file = os.fdopen(os.dup(fd), "w", encoding="utf-8", errors="replace")

    return TerminalDriver


def _tell(fd: int | None, line: str) -> None:
    """A line for the operator; the terminal may already be gone (SIGHUP), which is fine."""
    try:
        os.write(2 if fd is None else fd, (line + "\n").encode())
    except OSError:
        pass


async def _answers(socket_path: Path) -> bool | None:
    """True when a daemon answers; None when one may be there but we may not connect."""
    try:
        client = await DaemonClient.connect(socket_path, timeout=2.0)
    except DaemonUnavailable as exc:
        return None if isinstance(exc.__cause__, PermissionError) else False
    await client.close()
    return True


async def _console(config: Any, socket_path: Path, state_dir: Path | None, readonly: bool) -> int:
    from daemon.server import AlreadyRunning

    embedded: Embedded | None = None
    if not readonly and await _answers(socket_path) is False:
        try:
            embedded = await start_embedded(config, socket_path, state_dir, redirect_stderr=sys.stderr.isatty())
        except AlreadyRunning:
            pass  # another daemon is starting on that socket: attach to it (the link retries)
        except Exception as exc:
            print(f"sai: no daemon answers on {socket_path} and one cannot be started here: {exc}\n"
                  "     (use --socket, SAI_SOCKET, or start one with `sai daemon`)", file=sys.stderr)
            return 1
    driver = _terminal_driver(embedded.terminal_fd) if embedded and embedded.terminal_fd is not None else None
    app = SaiConsole(str(socket_path), readonly=readonly, embedded=embedded, driver_class=driver,
                     fleet_sockets=config.fleet.sockets)
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGHUP):  # killed, or the SSH session dropped: stop cleanly
        loop.add_signal_handler(sig, app.exit, 0)
    try:
        await app.run_async()
    finally:
        if embedded is not None:
            if embedded.daemon.drain_deadline is None:  # not stopped from inside the console already
                running = embedded.daemon.queue.status()["running"]
                _tell(embedded.terminal_fd, "sai: stopping the embedded daemon" + (
                    f" ({running} running job(s) have up to {embedded.daemon.config.daemon.shutdown_grace:.0f} s "
                    "to finish, then go back to the queue)..." if running else "..."))
            await embedded.stop()
            _tell(2, f"sai: embedded daemon stopped (log: {embedded.log_path})")
    return app.return_code or 0


def run_console(args: argparse.Namespace) -> int:
    from daemon import config, paths

    try:
        cfg = config.load(args.config)
    except config.ConfigError as exc:
        print(f"sai: bad configuration: {exc}", file=sys.stderr)
        return 2
    socket_path = paths.socket_path(args.socket, cfg.daemon.socket)
    state_dir = Path(args.state_dir) if args.state_dir else None
    return asyncio.run(_console(cfg, socket_path, state_dir, bool(args.readonly)))
