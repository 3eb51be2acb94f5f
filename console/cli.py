"""`sai`: the console (no subcommand) and the command line. Imports nothing heavy up front:
`sai --help` and every client command start without torch."""

from __future__ import annotations

import argparse
import asyncio
import importlib
import json
import os
import pkgutil
import re
import sys
from typing import Any, Iterable, NoReturn, Sequence

from console import clihelp
from daemon.client import DaemonClient, DaemonUnavailable
from daemon.exitcodes import ExitCode
from daemon.protocol import NOT_PERMITTED, RpcError

EXIT_ERROR = ExitCode.FAILURE
EXIT_UNAVAILABLE = ExitCode.UNAVAILABLE
HELP_ORDER = ("service", "jobs", "wait", "monitor", "audit", "outputs", "report")
"""Command modules in the order `sai --help` lists their commands: everyday use first."""
FULL_JOB_ID = re.compile(r"j[0-9a-f]{12}")


class _Output:
    """Whether this run's errors are also printed as JSON on stdout (the command was given --json)."""

    json_errors = False


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


def add_job_argument(parser: argparse.ArgumentParser, nargs: str | None = None, text: str = "") -> None:
    """The JOB argument, named the same in every command; `resolve_job` turns it into a full id."""
    parser.add_argument("job_id", metavar="JOB", nargs=nargs,
                        help=text or "a job id, or enough of its start to be unique (e.g. j3f2a)")


async def resolve_job(client: DaemonClient, text: str) -> str:
    """The full id of the job `text` names: a full id as it is, else the daemon's `job.resolve`
    (RpcError: no such job, or several, named)."""
    if FULL_JOB_ID.fullmatch(text):
        return text
    return str((await client.call("job.resolve", prefix=text))["job_id"])


def fail(message: str, code: int = EXIT_ERROR, data: dict[str, Any] | None = None) -> int:
    """Say what went wrong on stderr (and as JSON on stdout under --json); return the exit status."""
    print(f"sai: {message}", file=sys.stderr)
    if _Output.json_errors:
        name = ExitCode(code).name if code in ExitCode._value2member_map_ else ExitCode.FAILURE.name
        error: dict[str, Any] = {"code": name.lower().replace("_", "-"), "exit": int(code), "message": message}
        if data:
            error.update(data)
        print(json.dumps({"error": error}, ensure_ascii=False), flush=True)
    return code


def _rpc_failure(exc: RpcError) -> int:
    code = ExitCode.DENIED if exc.code == NOT_PERMITTED else ExitCode.FAILURE
    return fail(exc.message, code, {"rpc_code": exc.code, **({"data": exc.data} if exc.data is not None else {})})


def _unavailable(exc: DaemonUnavailable) -> int:
    denied = isinstance(exc.__cause__, PermissionError)
    return fail(str(exc), ExitCode.DENIED if denied else ExitCode.UNAVAILABLE)


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
        return _unavailable(exc)
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


def wants_json(args: argparse.Namespace) -> bool:
    return bool(getattr(args, "json", False)) or getattr(args, "format", None) == "json"


def main(argv: Sequence[str] | None = None) -> int:
    words = sys.argv[1:] if argv is None else list(argv)
    _Output.json_errors = "--json" in words
    parser = build_parser()
    args = parser.parse_args(words)
    _Output.json_errors = wants_json(args)
    if args.command is None:
        from console.launch import run_console

        return run_console(args)
    try:
        return _event_loop_run(_run(args))
    except RpcError as exc:
        return _rpc_failure(exc)
    except DaemonUnavailable as exc:
        return _unavailable(exc)
    except KeyboardInterrupt:
        return ExitCode.INTERRUPTED
    except BrokenPipeError:
        # The reader went away (`sai jobs | head`): say nothing more, as other Unix tools do.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except OSError as exc:  # a file the command was told to read or write: name it, no traceback
        return fail(f"{exc.filename}: {exc.strerror}" if exc.filename else str(exc))


if __name__ == "__main__":
    # `python -m console.cli`: run the imported module's main, so the commands (which import
    # console.cli) share its state, such as whether errors are also JSON.
    from console.cli import main as imported_main

    sys.exit(imported_main())
