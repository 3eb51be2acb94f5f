"""`sai`: the console (no subcommand) and the command line. Imports nothing heavy up front:
`sai --help` and every client command start without torch."""

from __future__ import annotations

import argparse
import asyncio
import importlib
import json
import os
import pkgutil
import sys
from typing import Any, Iterable, Sequence

from daemon.client import DaemonClient, DaemonUnavailable
from daemon.protocol import RpcError

EXIT_ERROR = 1
EXIT_UNAVAILABLE = 3
HELP_ORDER = ("service", "jobs", "monitor", "audit", "outputs", "report")
"""Command modules in the order `sai --help` lists their commands: everyday use first."""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="sai", description="Secure AI Studio: offline image generation. With no command, opens the console.")
    _add_common(parser, None)
    parser.add_argument("--version", action="version", version=f"%(prog)s {_version()}",
                        help="print the installed version and exit")
    parser.add_argument("--readonly", action="store_true", help="console: attach with every destructive action removed")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    import console.commands as commands

    names = sorted(info.name for info in pkgutil.iter_modules(commands.__path__))
    for name in sorted(names, key=lambda n: HELP_ORDER.index(n) if n in HELP_ORDER else len(HELP_ORDER)):
        importlib.import_module(f"console.commands.{name}").register(sub)
    for command in sub.choices.values():
        _add_common(command, argparse.SUPPRESS)
    return parser


def _version() -> str:
    from daemon import __version__

    return __version__


def _add_common(parser: argparse.ArgumentParser, default: Any) -> None:
    """--socket, --config and --state-dir, accepted before or after the command."""
    known = {opt for action in parser._actions for opt in action.option_strings}
    for flag, text in (("--socket", "daemon socket (default: $SAI_SOCKET, config, $XDG_RUNTIME_DIR/sai/daemon.sock)"),
                       ("--config", "config file layered over the defaults"),
                       ("--state-dir", "state directory of a foreground or embedded daemon")):
        if flag not in known:
            parser.add_argument(flag, default=default, help=text)


def add_json_flag(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", action="store_true", help="print JSON for scripts")


def print_json(value: Any) -> None:
    print(json.dumps(value, indent=2, ensure_ascii=False))


def print_fields(rows: Iterable[tuple[str, Any]]) -> None:
    """`name  value` lines, the values in one column; None and "" print as "-"."""
    rows = list(rows)
    width = max((len(name) for name, _ in rows), default=0)
    for name, value in rows:
        print(f"{name:<{width}}  {'-' if value is None or value == '' else value}")


def fail(message: str, code: int = EXIT_ERROR) -> int:
    print(f"sai: {message}", file=sys.stderr)
    return code


def socket_for(args: argparse.Namespace) -> str:
    from daemon import config, paths

    configured = config.load(args.config).daemon.socket if args.config else _configured_socket()
    return str(paths.socket_path(args.socket, configured))


def _configured_socket() -> str:
    from daemon import config

    try:
        return config.load().daemon.socket
    except config.ConfigError:
        return ""


async def _run(args: argparse.Namespace) -> int:
    if not getattr(args, "needs_daemon", True):
        return await args.handler(args, None)
    try:
        client = await DaemonClient.connect(socket_for(args))
    except DaemonUnavailable as exc:
        return fail(str(exc), EXIT_UNAVAILABLE)
    try:
        return await args.handler(args, client)
    finally:
        await client.close()


def _event_loop_run(coro: Any) -> Any:
    """uvloop where it is installed (the daemon's framing and socket work run faster), else asyncio."""
    try:
        import uvloop
    except ImportError:
        return asyncio.run(coro)
    return uvloop.run(coro)


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        from console.launch import run_console

        return run_console(args)
    try:
        return _event_loop_run(_run(args))
    except RpcError as exc:
        return fail(exc.message)
    except DaemonUnavailable as exc:
        return fail(str(exc), EXIT_UNAVAILABLE)
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        # The reader went away (`sai jobs | head`): say nothing more, as other Unix tools do.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except OSError as exc:  # a file the command was told to read or write: name it, no traceback
        return fail(f"{exc.filename}: {exc.strerror}" if exc.filename else str(exc))


if __name__ == "__main__":
    sys.exit(main())
