"""`sai`: the console (no subcommand) and the command line. Imports nothing heavy up front:
`sai --help` and every client command start without torch."""

from __future__ import annotations

import argparse
import asyncio
import importlib
import os
import pkgutil
import sys
from collections.abc import Sequence
from typing import Any, NoReturn

from console import clihelp
from console.cliargs import socket_for, wants_json
from console.cliout import fail, rpc_failure, set_json_errors, unavailable
from daemon.client import DaemonClient, DaemonUnavailable
from daemon.exitcodes import ExitCode
from daemon.protocol import RpcError

HELP_ORDER = ("service", "jobs", "wait", "monitor", "audit", "outputs", "report")
"""Command modules in the order `sai --help` lists their commands: everyday use first."""


class SaiParser(argparse.ArgumentParser):
    """A usage error exits with ExitCode.USAGE, and is JSON on stdout too when --json was given."""

    def error(self, message: str) -> NoReturn:
        self.print_usage(sys.stderr)
        command = self.prog.removeprefix("sai").strip()
        fail(f"{command}: {message}" if command else message, ExitCode.USAGE)
        sys.exit(ExitCode.USAGE)


def build_parser() -> argparse.ArgumentParser:
    parser = SaiParser(
        prog="sai", description="Secure AI Studio: offline image generation. With no command, opens the console.",
        epilog=clihelp.exit_status_epilog())
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
    clihelp.apply(parser)
    return parser


def _version() -> str:
    from daemon import __version__

    return __version__


def _add_common(parser: argparse.ArgumentParser, default: Any) -> None:
    """--socket, --config and --state-dir, accepted before or after the command."""
    known = {opt for action in parser._actions for opt in action.option_strings}
    for flag, text in (("--socket", "daemon socket (default: $SAI_SOCKET, config, $XDG_RUNTIME_DIR/sai/daemon.sock)"),
                       ("--config", "config file layered over the defaults (default: none; the defaults, "
                                    "/etc/secure-ai-studio/config.toml and ~/.config/secure-ai-studio/config.toml)"),
                       ("--state-dir", "state directory of a foreground or embedded daemon (default: config's "
                                       "daemon.state_dir)")):
        if flag not in known:
            parser.add_argument(flag, default=default, help=text)


async def _run(args: argparse.Namespace) -> int:
    if not getattr(args, "needs_daemon", True):
        return await args.handler(args, None)
    try:
        client = await DaemonClient.connect(socket_for(args))
    except DaemonUnavailable as exc:
        return unavailable(exc)
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
    words = sys.argv[1:] if argv is None else list(argv)
    set_json_errors("--json" in words)
    parser = build_parser()
    args = parser.parse_args(words)
    set_json_errors(wants_json(args))
    if args.command is None:
        from console.launch import run_console

        return run_console(args)
    from daemon.config import ConfigError

    try:
        return _event_loop_run(_run(args))
    except ConfigError as exc:  # a client config (--config, the user's or system's file) with a bad value
        return fail(f"bad configuration: {exc}", ExitCode.USAGE)
    except RpcError as exc:
        return rpc_failure(exc)
    except DaemonUnavailable as exc:
        return unavailable(exc)
    except KeyboardInterrupt:
        return ExitCode.INTERRUPTED
    except BrokenPipeError:
        # The reader went away (`sai jobs | head`): say nothing more, as other Unix tools do.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except OSError as exc:  # a file the command was told to read or write: name it, no traceback
        return fail(f"{exc.filename}: {exc.strerror}" if exc.filename else str(exc))


if __name__ == "__main__":
    sys.exit(main())
